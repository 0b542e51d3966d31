"""Redis task store (``redis.asyncio``, the ``redis`` extra): shared by several
managers, and the basis of restart recovery.

Keys (every one under the hash tag ``{prefix}``, e.g. ``{aduib:tasks}:``, so the
scripts that touch several run on a Redis Cluster too): ``task:ID`` the entry
JSON (terminal ones expire after the result TTL), ``active`` the set of
non-terminal ids, ``lease:ID`` the owner of a queued/running task (expires
unless renewed), ``idem:KEY`` idempotency index. Every call is bounded as a
whole by ``timeout`` (:meth:`RedisTaskStore.from_url`: 2 s). Every save is one
script (entry, active set and the publish on the ``changes`` channel,
``ID REV ORIGIN STATUS``), so managers on other instances learn of it at once
(:meth:`RedisTaskStore.changes`); with
``wait_replicas`` (the URL's, default on Sentinel) it is acknowledged by that
many replicas (``WAIT``) before the save returns, so it survives a failover.

Every record is charged to its tenant's :class:`~aduib_asgi.storage.budget.RedisByteBudget`
(shared by the instances on this Redis) for the result TTL from its last save.
Redis errors and timeouts surface as 503 / 5002 with ``Retry-After``
(:class:`TaskStoreUnavailable`), never as a 500.
"""

from __future__ import annotations

import functools
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import anyio

from aduib_asgi.extras import require

require("redis.asyncio", "redis", "RedisTaskStore")
from redis.asyncio import Redis
from redis.exceptions import RedisError

from aduib_asgi.errors import RpcError
from aduib_asgi.storage.budget import RECORD_OVERHEAD, RedisByteBudget, queue
from aduib_asgi.storage.pubsub import messages
from aduib_asgi.storage.redis_url import parse_redis_url, queue_wait, redis_client
from aduib_asgi.tasks.store import DEFAULT_RESULT_TTL, TaskChange, TaskEntry

__all__ = ["RedisTaskStore", "TaskStoreUnavailable"]

P = ParamSpec("P")
T = TypeVar("T")


class TaskStoreUnavailable(RpcError):
    """503 / 5002 + ``Retry-After``: Redis did not answer (down, unreachable, timed out)."""

    default_code = 5002


def _guarded(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        # bounded as a whole: a cluster client retries a dead node on its own
        limit = getattr(args[0], "timeout", None) or math.inf
        try:
            with anyio.fail_after(limit):
                return await fn(*args, **kwargs)
        except (RedisError, OSError, TimeoutError) as exc:
            raise TaskStoreUnavailable(
                5002, f"The task store is unavailable ({type(exc).__name__})",
                headers={"Retry-After": "1"}) from exc
    return call

# Extend / delete a lease only while we still own it.
_RENEW = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[1] then
    redis.call('pexpire', key, ARGV[2]); n = n + 1
  end
end
return n
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# KEYS: the entry, the active set. ARGV: id, entry JSON, TTL ms (0: active, no TTL),
# channel, message. One script: atomic, and on a cluster on the tag's node.
_SAVE = """
if ARGV[3] ~= '0' then
  redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('srem', KEYS[2], ARGV[1])
else
  redis.call('set', KEYS[1], ARGV[2])
  redis.call('sadd', KEYS[2], ARGV[1])
end
redis.call('publish', ARGV[4], ARGV[5])
return 1
"""


class RedisTaskStore:
    """Tasks in Redis; create with :meth:`from_url` or around an existing client."""

    def __init__(
        self,
        client: Redis,  # created with decode_responses=True
        *,
        prefix: str = "aduib:tasks:",
        result_ttl: float = DEFAULT_RESULT_TTL,
        budget: RedisByteBudget | None = None,
        per_tenant: int | None = None,
        total: int | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
        timeout: float | None = None,
    ) -> None:
        self.client = client
        #: Every store call is bounded by this (seconds; None: the client's own timeouts).
        self.timeout = timeout
        self.prefix = prefix
        #: Replicas that must acknowledge a save (``WAIT``), and for how long.
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._tag = "{" + prefix.rstrip(":") + "}:"  # one hash tag for every key
        self.result_ttl = result_ttl
        if budget is None:
            from aduib_asgi.storage.budget import DEFAULT_PER_TENANT, DEFAULT_TOTAL

            budget = RedisByteBudget(client, per_tenant=per_tenant or DEFAULT_PER_TENANT,
                                     total=total or DEFAULT_TOTAL)
        self.budget = budget
        self._active = self._tag + "active"
        self._channel = self._tag + "changes"
        #: Saves fewer replicas acknowledged than asked (kept on the primary alone).
        self.unreplicated = 0
        #: Tags this store's publishes, so its own manager can skip them.
        self.origin = uuid.uuid4().hex
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 2.0, **options: Any) -> RedisTaskStore:
        """A store on the Redis at ``url``: any form of
        :mod:`aduib_asgi.storage.redis_url` (single, Sentinel, Cluster)."""
        target = parse_redis_url(url)
        options.setdefault("wait_replicas", target.wait_replicas)
        options.setdefault("wait_timeout_ms", target.wait_timeout_ms)
        return cls(redis_client(target, timeout=timeout, decode_responses=True),
                   timeout=timeout, **options)

    def _key(self, task_id: str) -> str:
        return f"{self._tag}task:{task_id}"

    def _lease(self, task_id: str) -> str:
        return f"{self._tag}lease:{task_id}"

    @_guarded
    async def create(self, entry: TaskEntry, idempotency_key: str | None = None) -> TaskEntry:
        idem = None
        if idempotency_key is not None:
            idem = f"{self._tag}idem:{idempotency_key}"
            ttl_ms = int(self.result_ttl * 1000)
            if not await self.client.set(idem, entry.task_id, nx=True, px=ttl_ms):
                existing_id = await self.client.get(idem)
                if existing_id is not None:
                    existing = await self._get(str(existing_id))
                    if existing is not None:
                        return existing
                await self.client.set(idem, entry.task_id, px=ttl_ms)
        try:
            await self._save(entry, strict=True)
        except BaseException:
            if idem is not None:  # refused (or failed): the key stays free for a retry
                with anyio.move_on_after(1.0, shield=True):
                    await self._release(keys=[idem], args=[entry.task_id])
            raise
        return entry

    @_guarded
    async def get(self, task_id: str) -> TaskEntry | None:
        return await self._get(task_id)

    async def _get(self, task_id: str) -> TaskEntry | None:
        raw = await self.client.get(self._key(task_id))
        return None if raw is None else TaskEntry.model_validate_json(raw)

    @_guarded
    async def save(self, entry: TaskEntry) -> None:
        await self._save(entry, strict=entry.record.result is not None)

    async def _save(self, entry: TaskEntry, *, strict: bool) -> None:
        tid = entry.task_id
        entry.rev += 1
        raw = entry.model_dump_json()
        size, expires = RECORD_OVERHEAD + len(raw), time.time() + self.result_ttl
        if strict:  # may be refused: checked before anything is written
            try:
                await self.budget.charge(entry.tenant, tid, size, expires,
                                         "the task result" if entry.record.result is not None
                                         else "the task")
            except BaseException:
                entry.rev -= 1
                raise
        key = self._key(tid)
        ttl = int(self.result_ttl * 1000) if entry.record.status.terminal else 0
        # one round trip (a pipeline; on a cluster the budget's node and the tag's)
        async with self.client.pipeline(transaction=False) as pipe:
            if not strict:  # always charged: in the same round trip as the write
                await self.budget.charge(entry.tenant, tid, size, expires, force=True,
                                         pipe=pipe)
            queue(pipe, _SAVE, [key, self._active],
                  [tid, raw, ttl, self._channel,
                   f"{tid} {entry.rev} {self.origin} {entry.record.status.value}"])
            waits = queue_wait(pipe, self.client, key, self.wait_replicas,
                               self.wait_timeout_ms)
            replies = await pipe.execute()
        if waits and int(replies[-1]) < self.wait_replicas:
            self.unreplicated += 1

    async def changes(self) -> AsyncIterator[TaskChange]:
        """Every save by any manager on this Redis, as it happens.

        One pub/sub connection for the iterator's lifetime
        (:func:`aduib_asgi.storage.pubsub.messages`); a connection error ends the
        iteration with the exception (the manager reconnects).
        """
        async for _, data in messages(self.client, self._channel):
            parts = data.split(" ")
            if len(parts) == 4 and parts[1].isdigit():
                tid, rev, origin, status = parts
                yield TaskChange(tid, int(rev), status, origin == self.origin)

    @_guarded
    async def claim(self, task_id: str, owner: str, ttl: float) -> bool:
        key = self._lease(task_id)
        if await self.client.set(key, owner, nx=True, px=int(ttl * 1000)):
            return True
        current = await self.client.get(key)
        if current is not None and current == owner:
            await self.client.pexpire(key, int(ttl * 1000))
            return True
        return False

    @_guarded
    async def renew(self, owner: str, task_ids: list[str], ttl: float) -> None:
        if task_ids:
            await self._renew(keys=[self._lease(t) for t in task_ids],
                              args=[owner, int(ttl * 1000)])

    @_guarded
    async def release(self, task_id: str, owner: str) -> None:
        await self._release(keys=[self._lease(task_id)], args=[owner])

    @_guarded
    async def orphans(self) -> list[str]:
        ids = [str(m) for m in await self.client.smembers(self._active)]
        if not ids:
            return []
        leases = await self.client.mget([self._lease(t) for t in ids])
        return [t for t, lease in zip(ids, leases, strict=True) if lease is None]

    @_guarded
    async def ping(self) -> None:
        await self.client.ping()

    async def aclose(self) -> None:
        await self.client.aclose()
