"""Task stores: the async storage protocol, the memory store, selection by URI.

A store keeps :class:`TaskEntry` objects (the wire :class:`TaskRecord` plus what
only the server needs: the submitter's principal and roles, a revision counter),
an idempotency index, the set of active (non-terminal) tasks and per-task
*leases*: a manager owns the tasks it queued or runs by holding their leases and
renewing them; a task whose lease lapsed (its manager died) is picked up again by
any manager's recovery scan.
"""

from __future__ import annotations

import heapq
import time
from typing import Any, NamedTuple, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from aduib_asgi.extras import require
from aduib_asgi.models import TaskRecord
from aduib_asgi.storage.budget import RECORD_OVERHEAD, ByteBudget

__all__ = ["MemoryTaskStore", "TaskChange", "TaskEntry", "TaskStore", "store_from_uri"]

DEFAULT_RESULT_TTL = 24 * 3600.0


class TaskChange(NamedTuple):
    """A save announced by a shared store: which task, its status, and whether we made it."""

    task_id: str
    rev: int
    status: str
    own: bool


class TaskEntry(BaseModel):
    """A stored task: the wire record plus server-only fields."""

    model_config = ConfigDict(extra="ignore")

    record: TaskRecord
    principal: str | None = None
    roles: list[str] = Field(default_factory=list)
    scopes: list[str] = Field(default_factory=list)
    #: The tenant layer's per-tenant configuration at submit time (``tenant_setting``).
    tenant_config: dict[str, Any] | None = None
    trace_id: str | None = None
    #: Bumped on every save; subscribers use it to skip stale events.
    rev: int = 0

    @property
    def task_id(self) -> str:
        return self.record.task_id

    @property
    def tenant(self) -> str:
        return self.record.tenant_id or "default"


@runtime_checkable
class TaskStore(Protocol):
    """What the task manager needs from a backend (every call async and bounded)."""

    async def create(self, entry: TaskEntry, idempotency_key: str | None = None) -> TaskEntry:
        """Store a new task; with a key already used, return the task stored under it.

        Charged to the tenant's byte budget: past it
        :class:`~aduib_asgi.storage.budget.BudgetExceeded` (429 / 5021).
        """

    async def get(self, task_id: str) -> TaskEntry | None: ...

    async def save(self, entry: TaskEntry) -> None:
        """Overwrite a task (bumping ``rev``); terminal tasks expire after the result TTL.

        A record carrying a result past the tenant's byte budget raises
        :class:`~aduib_asgi.storage.budget.BudgetExceeded` and is not saved; other
        changes (status, progress, errors) are always saved and charged.
        """

    async def claim(self, task_id: str, owner: str, ttl: float) -> bool:
        """Take the lease of ``task_id`` unless another live owner holds it."""

    async def renew(self, owner: str, task_ids: list[str], ttl: float) -> None:
        """Extend the leases ``owner`` still holds."""

    async def release(self, task_id: str, owner: str) -> None: ...

    async def orphans(self) -> list[str]:
        """Active task ids whose lease is missing or expired."""

    # Optional: ``changes() -> AsyncIterator[TaskChange]`` yields every save by any
    # manager sharing the store (Redis: pub/sub). Managers listen to it to relay
    # other instances' events and cancels at once; stores without it (the
    # in-process memory store) rely on the polls.

    async def ping(self) -> None:
        """Raise when the backend is not reachable."""

    async def aclose(self) -> None: ...


class MemoryTaskStore:
    """In-process store (the default): one manager, or several in one process.

    Records are JSON strings charged to ``budget`` (per tenant and in total)
    until their TTL; expired ones are swept in expiry order on every save.
    """

    def __init__(self, *, result_ttl: float = DEFAULT_RESULT_TTL,
                 budget: ByteBudget | None = None) -> None:
        self.result_ttl = result_ttl
        self.budget = budget if budget is not None else ByteBudget()
        self._tasks: dict[str, str] = {}  # id -> JSON, so callers never share objects
        self._sizes: dict[str, tuple[str, int]] = {}  # id -> (tenant, bytes charged)
        self._expires: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []  # (expires, id), a heap
        self._idem: dict[str, str] = {}
        self._idem_of: dict[str, str] = {}  # id -> its idempotency key
        self._active: set[str] = set()
        self._leases: dict[str, tuple[str, float]] = {}

    async def create(self, entry: TaskEntry, idempotency_key: str | None = None) -> TaskEntry:
        self._prune()
        if idempotency_key is not None:
            existing_id = self._idem.get(idempotency_key)
            if existing_id is not None:
                existing = await self.get(existing_id)
                if existing is not None:
                    return existing
        self._save(entry, strict=True)
        if idempotency_key is not None:
            self._idem[idempotency_key] = entry.task_id
            self._idem_of[entry.task_id] = idempotency_key
        return entry

    async def get(self, task_id: str) -> TaskEntry | None:
        raw = self._tasks.get(task_id)
        if raw is None:
            return None
        exp = self._expires.get(task_id)
        if exp is not None and exp <= time.monotonic():
            self._drop(task_id)
            return None
        return TaskEntry.model_validate_json(raw)

    async def save(self, entry: TaskEntry) -> None:
        self._prune()
        self._save(entry, strict=entry.record.result is not None)

    def _save(self, entry: TaskEntry, *, strict: bool) -> None:
        tid = entry.task_id
        entry.rev += 1
        raw = entry.model_dump_json()
        tenant, old = self._sizes.get(tid, (entry.tenant, 0))
        size = RECORD_OVERHEAD + len(raw)
        try:
            self.budget.charge(tenant, size - old, "the task" if not old else "the task result",
                               force=not strict)
        except BaseException:
            entry.rev -= 1
            raise
        self._sizes[tid] = (tenant, size)
        self._tasks[tid] = raw
        if entry.record.status.terminal:
            self._active.discard(tid)
            self._leases.pop(tid, None)
            expires = time.monotonic() + self.result_ttl
            self._expires[tid] = expires
            heapq.heappush(self._expiry, (expires, tid))
        else:
            self._active.add(tid)

    async def claim(self, task_id: str, owner: str, ttl: float) -> bool:
        now = time.monotonic()
        lease = self._leases.get(task_id)
        if lease is not None and lease[0] != owner and lease[1] > now:
            return False
        self._leases[task_id] = (owner, now + ttl)
        return True

    async def renew(self, owner: str, task_ids: list[str], ttl: float) -> None:
        until = time.monotonic() + ttl
        for tid in task_ids:
            lease = self._leases.get(tid)
            if lease is not None and lease[0] == owner:
                self._leases[tid] = (owner, until)

    async def release(self, task_id: str, owner: str) -> None:
        lease = self._leases.get(task_id)
        if lease is not None and lease[0] == owner:
            del self._leases[task_id]

    async def orphans(self) -> list[str]:
        now = time.monotonic()
        out = []
        for tid in self._active:
            lease = self._leases.get(tid)
            if lease is None or lease[1] <= now:
                out.append(tid)
        return out

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def _drop(self, task_id: str) -> None:
        self._tasks.pop(task_id, None)
        self._expires.pop(task_id, None)
        self._active.discard(task_id)
        self._leases.pop(task_id, None)
        charged = self._sizes.pop(task_id, None)
        if charged is not None:
            self.budget.refund(*charged)
        key = self._idem_of.pop(task_id, None)
        if key is not None and self._idem.get(key) == task_id:
            del self._idem[key]

    def _prune(self) -> None:
        """Drop the records whose TTL passed, in expiry order."""
        heap = self._expiry
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            exp, tid = heapq.heappop(heap)
            if self._expires.get(tid) == exp:
                self._drop(tid)


def store_from_uri(uri: str | None, **options: Any) -> TaskStore:
    """``memory://`` (or None) → :class:`MemoryTaskStore`; a Redis URL (``redis://``,
    ``rediss://``, ``redis+sentinel://``, ``redis+cluster://``) →
    :class:`~aduib_asgi.tasks.redis_store.RedisTaskStore` (needs the ``redis`` extra).

    ``budget=`` / ``per_tenant=`` / ``total=``: the byte budget (see the stores)."""
    if uri is None or uri.startswith("memory://") or uri == "memory":
        per_tenant, total = options.pop("per_tenant", None), options.pop("total", None)
        if "budget" not in options and (per_tenant or total):
            from aduib_asgi.storage.budget import DEFAULT_PER_TENANT, DEFAULT_TOTAL

            options["budget"] = ByteBudget(per_tenant=per_tenant or DEFAULT_PER_TENANT,
                                           total=total or DEFAULT_TOTAL)
        return MemoryTaskStore(**options)
    from aduib_asgi.storage.redis_url import is_redis_url

    if is_redis_url(uri):
        require("redis.asyncio", "redis", "A redis:// task store")
        from aduib_asgi.tasks.redis_store import RedisTaskStore

        return RedisTaskStore.from_url(uri, **options)
    raise ValueError(f"unsupported task store URI {uri!r} (memory:// or a Redis URL)")
