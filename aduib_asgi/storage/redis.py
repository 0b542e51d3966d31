"""Redis idempotency store (``redis.asyncio``): SET NX with a lease, then the response with a TTL.

Values are msgpack lists: ``[0, fingerprint, token]`` while in flight,
``[1, fingerprint, status, [[name, value], ...], body]`` once completed.
Renew, complete and release are Lua scripts that act only while the key still
holds the caller's own reservation, so a request whose lease ran out can never
overwrite or drop the entry of a newer owner.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

import anyio
import msgpack

from aduib_asgi.extras import require
from aduib_asgi.storage import Reservation, StoredResponse, StoreEntry

__all__ = ["RedisIdempotencyStore"]

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
    headers = tuple((bytes(k), bytes(v)) for k, v in value[3])
    return StoreEntry(value[1], None, StoredResponse(int(value[2]), headers, bytes(value[4])))


class RedisIdempotencyStore:
    """Shared by every instance that points at the same Redis (keys under ``prefix``).

    ``socket_timeout`` bounds each network call; the idempotency layer also
    bounds every store call with its own timeout.
    """

    in_process = False
    needs_renewal = True

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *,
                 prefix: str = "aduib:idem:", socket_timeout: float = 1.0,
                 poll_interval: float = 0.025, client: Any = None) -> None:
        if client is None:
            Redis = require("redis.asyncio", "redis", "RedisIdempotencyStore").Redis

            client = Redis.from_url(url, socket_timeout=socket_timeout,
                                    socket_connect_timeout=socket_timeout)
        self._redis = client
        self.prefix = prefix
        self.poll_interval = poll_interval
        self._renew = client.register_script(_RENEW)
        self._complete = client.register_script(_COMPLETE)
        self._release = client.register_script(_RELEASE)
        # the blob each of our own reservations holds, by token
        self._blobs: dict[str, bytes] = {}

    async def reserve(self, key: str, fingerprint: str, lease: float) -> Reservation:
        rkey = self.prefix + key
        for _ in range(3):  # the key may expire between SET NX and GET: try again
            token = uuid.uuid4().hex
            blob = _in_flight_blob(fingerprint, token)
            try:
                reserved = await self._redis.set(rkey, blob, nx=True, px=_ms(lease))
            except BaseException:
                # timed out, cancelled or disconnected after the server may have run
                # the SET: drop it if it is ours, so no key stays reserved by nobody
                # (unreachable Redis: the lease expires on its own)
                with anyio.move_on_after(1.0, shield=True), contextlib.suppress(Exception):
                    await self._release(keys=[rkey], args=[blob])
                raise
            if reserved:
                self._blobs[token] = blob
                return Reservation("reserved", token=token)
            entry = _decode(await self._redis.get(rkey))
            if entry is not None:
                if entry.response is not None:
                    return Reservation("completed", entry=entry)
                return Reservation("in_flight", entry=entry)
        raise RuntimeError("idempotency key kept changing while reserving it")

    async def renew(self, key: str, token: str, lease: float) -> bool:
        blob = self._blobs.get(token)
        if blob is None:
            return False
        return bool(await self._renew(keys=[self.prefix + key], args=[blob, _ms(lease)]))

    async def complete(self, key: str, token: str, response: StoredResponse,
                       ttl: float) -> bool:
        blob = self._blobs.get(token)
        if blob is None:
            return False
        fingerprint = msgpack.unpackb(blob)[1]
        value = msgpack.packb([1, fingerprint, response.status,
                               [list(h) for h in response.headers], response.body])
        done = await self._complete(keys=[self.prefix + key], args=[blob, value, _ms(ttl)])
        del self._blobs[token]  # kept on failure so that release() can still drop the lease
        return bool(done)

    async def release(self, key: str, token: str) -> None:
        blob = self._blobs.pop(token, None)  # forgotten even if Redis is unreachable
        if blob is not None:
            await self._release(keys=[self.prefix + key], args=[blob])

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


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
