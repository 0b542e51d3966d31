"""Redis idempotency store (``redis.asyncio``): SET NX with a lease, then the response with a TTL.

Values are msgpack lists: ``[0, fingerprint, token]`` while in flight,
``[1, fingerprint, status, [[name, value], ...], body]`` once completed,
``[2, fingerprint, status]`` once completed without its response retained.
Every record is charged to the tenant's :class:`~aduib_asgi.storage.budget.RedisByteBudget`
(shared by the instances on this Redis) until its TTL.
Renew, complete and release are Lua scripts that act only while the key still
holds the caller's own reservation, so a request whose lease ran out can never
overwrite or drop the entry of a newer owner. Each touches one key, so they run
unchanged on a Redis Cluster (the budget's keys share their own hash tag). The
URL is any form of :mod:`aduib_asgi.storage.redis_url`; with ``wait_replicas``
(the default on Sentinel) a completed response is acknowledged by that many
replicas (``WAIT``) before :meth:`RedisIdempotencyStore.complete` returns.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from typing import Any

import anyio
import msgpack

from aduib_asgi.extras import require
from aduib_asgi.storage import Reservation, StoredResponse, StoreEntry
from aduib_asgi.storage.budget import (
    DEFAULT_PER_TENANT,
    DEFAULT_TOTAL,
    RECORD_OVERHEAD,
    BudgetExceeded,
    RedisByteBudget,
    queue,
)
from aduib_asgi.storage.redis_url import queue_wait

__all__ = ["RedisIdempotencyStore"]

logger = logging.getLogger("aduib_asgi.storage.redis")

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_COMPLETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""

# The response we just stored becomes the not-retained marker (same TTL).
_REPLACE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _in_flight_blob(fingerprint: str, token: str) -> bytes:
    blob: bytes = msgpack.packb([0, fingerprint, token])
    return blob


def _decode(blob: bytes | None) -> StoreEntry | None:
    if blob is None:
        return None
    value = msgpack.unpackb(blob)
    if value[0] == 0:
        return StoreEntry(value[1], value[2])
    if value[0] == 2:
        return StoreEntry(value[1], None, StoredResponse.not_retained(int(value[2])))
    headers = tuple((bytes(k), bytes(v)) for k, v in value[3])
    return StoreEntry(value[1], None, StoredResponse(int(value[2]), headers, bytes(value[4])))


class RedisIdempotencyStore:
    """Shared by every instance that points at the same Redis (keys under ``prefix``).

    ``socket_timeout`` bounds each network call; the idempotency layer also
    bounds every store call with its own timeout. ``budget``: a
    :class:`RedisByteBudget` (or ``per_tenant``/``total`` bytes for one on this
    client); a reservation is charged for the record's TTL until completed or
    released, a completed record for its bytes until it expires.
    """

    in_process = False
    needs_renewal = True

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *,
                 prefix: str = "aduib:idem:", socket_timeout: float = 1.0,
                 poll_interval: float = 0.025, client: Any = None,
                 budget: RedisByteBudget | None = None, per_tenant: int | None = None,
                 total: int | None = None, ttl: float = 24 * 3600.0,
                 wait_replicas: int | None = None, wait_timeout_ms: int | None = None) -> None:
        require("redis.asyncio", "redis", "RedisIdempotencyStore")
        from aduib_asgi.storage.redis_url import parse_redis_url, redis_client

        target = parse_redis_url(url)
        if client is None:
            client = redis_client(target, timeout=socket_timeout)
        self._redis = client
        #: Replicas that must acknowledge a completed response (``WAIT``), and for how long.
        self.wait_replicas = target.wait_replicas if wait_replicas is None else wait_replicas
        self.wait_timeout_ms = wait_timeout_ms or target.wait_timeout_ms
        #: Completed responses fewer replicas acknowledged than asked (kept on the primary).
        self.unreplicated = 0
        self.prefix = prefix
        self.poll_interval = poll_interval
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        if budget is None:
            budget = RedisByteBudget(client, per_tenant=per_tenant or DEFAULT_PER_TENANT,
                                     total=total or DEFAULT_TOTAL)
        self.budget = budget
        #: How long a reservation is charged for when its owner never ends it (crash).
        self.ttl = ttl
        # per own reservation (by token): the blob it holds, its tenant
        self._blobs: dict[str, tuple[bytes, str]] = {}

    async def reserve(self, key: str, fingerprint: str, lease: float, *,
                      tenant: str = "default", headroom: int = 0) -> Reservation:
        rkey = self.prefix + key
        for _ in range(3):  # the key may expire between SET NX and GET: try again
            token = uuid.uuid4().hex
            blob = _in_flight_blob(fingerprint, token)
            record = f"{rkey}:{token}"
            try:
                # SET NX and its charge in one round trip (a pipeline, not a transaction)
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.set(rkey, blob, nx=True, px=_ms(lease))
                    await self.budget.charge(
                        tenant, record, RECORD_OVERHEAD + len(rkey) + len(blob),
                        time.time() + max(self.ttl, lease), headroom=headroom, pipe=pipe)
                    reserved, charged = await pipe.execute()
            except BaseException:
                # timed out, cancelled or disconnected after the server may have run
                # them: drop the SET if it is ours and the charge, so no key stays
                # reserved by nobody (unreachable Redis: the lease expires on its own)
                with anyio.move_on_after(1.0, shield=True), contextlib.suppress(Exception):
                    await self._release(keys=[rkey], args=[blob])
                    await self.budget.refund(tenant, record)
                raise
            if reserved:
                try:
                    self.budget.check(charged, tenant, "an idempotency record")
                except BudgetExceeded:
                    with anyio.move_on_after(1.0, shield=True), \
                            contextlib.suppress(Exception):
                        await self._release(keys=[rkey], args=[blob])
                    raise
                self._blobs[token] = (blob, tenant)
                return Reservation("reserved", token=token)
            # another request holds the key: give the charge back and read what is there
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(rkey)
                if int(charged) > 0:
                    await self.budget.refund(tenant, record, pipe=pipe)
                current = (await pipe.execute())[0]
            entry = _decode(current)
            if entry is not None:
                if entry.response is not None:
                    return Reservation("completed", entry=entry)
                return Reservation("in_flight", entry=entry)
        raise RuntimeError("idempotency key kept changing while reserving it")

    async def renew(self, key: str, token: str, lease: float) -> bool:
        own = self._blobs.get(token)
        if own is None:
            return False
        return bool(await self._renew(keys=[self.prefix + key], args=[own[0], _ms(lease)]))

    async def complete(self, key: str, token: str, response: StoredResponse,
                       ttl: float) -> bool:
        own = self._blobs.get(token)
        if own is None:
            return False
        blob, tenant = own
        rkey = self.prefix + key
        record = f"{rkey}:{token}"
        fingerprint = msgpack.unpackb(blob)[1]
        value = _completed_blob(fingerprint, response)
        expires = time.time() + ttl
        size = RECORD_OVERHEAD + len(rkey) + len(value)
        # the charge and the write in one round trip; the charge is checked after
        async with self._redis.pipeline(transaction=False) as pipe:
            await self.budget.charge(tenant, record, size, expires, pipe=pipe)
            queue(pipe, _COMPLETE, [rkey], [blob, value, _ms(ttl)])
            waits = queue_wait(pipe, self._redis, rkey, self.wait_replicas,
                               self.wait_timeout_ms)
            charged, done, *acked = await pipe.execute()
        if waits and int(acked[0]) < self.wait_replicas:
            self._unreplicated(int(acked[0]))
        del self._blobs[token]  # kept on failure so that release() can still drop the lease
        if not done:
            with contextlib.suppress(Exception):
                await self.budget.refund(tenant, record)
            return False
        try:
            self.budget.check(charged, tenant, "the response")
        except BudgetExceeded:  # ran once: a repeat is told so, never run again
            marker = _completed_blob(fingerprint, StoredResponse.not_retained(response.status))
            async with self._redis.pipeline(transaction=False) as pipe:
                queue(pipe, _REPLACE, [rkey], [value, marker])
                await self.budget.charge(tenant, record, RECORD_OVERHEAD + len(rkey)
                                         + len(marker), expires, force=True, pipe=pipe)
                await pipe.execute()
        return True

    def _unreplicated(self, acked: int) -> None:
        self.unreplicated += 1
        if self.unreplicated == 1 or self.unreplicated % 1000 == 0:
            logger.warning("%d completed idempotent response(s) acknowledged by fewer than "
                           "%d replica(s) within %d ms (this one: %d); a failover before "
                           "they replicate loses them", self.unreplicated, self.wait_replicas,
                           self.wait_timeout_ms, acked)

    async def release(self, key: str, token: str) -> None:
        own = self._blobs.pop(token, None)  # forgotten even if Redis is unreachable
        if own is not None:
            blob, tenant = own
            await self._release(keys=[self.prefix + key], args=[blob])
            await self.budget.refund(tenant, f"{self.prefix}{key}:{token}")

    async def get(self, key: str) -> StoreEntry | None:
        return _decode(await self._redis.get(self.prefix + key))

    async def wait(self, key: str, timeout: float) -> StoreEntry | None:
        deadline = time.monotonic() + timeout
        while True:
            entry = await self.get(key)
            if entry is None or entry.response is not None:
                return entry
            left = deadline - time.monotonic()
            if left <= 0:
                return entry
            await anyio.sleep(min(self.poll_interval, left))

    async def aclose(self) -> None:
        await self._redis.aclose()


def _completed_blob(fingerprint: str, response: StoredResponse) -> bytes:
    if not response.retained:
        small: bytes = msgpack.packb([2, fingerprint, response.status])
        return small
    blob: bytes = msgpack.packb([1, fingerprint, response.status,
                                 [list(h) for h in response.headers], response.body])
    return blob


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
