"""The task manager: submit, run (priority queue, workers, retries, timeouts),
cancel, subscribe, and restart recovery over a :class:`TaskStore`.

Status machine: ``pending`` (stored, not in any manager's queue) → ``scheduled``
(in a run queue, due now or at ``scheduled_at_ms``) → ``running`` →
``succeeded`` | ``failed`` | ``canceled``; a failed attempt with attempts left
goes ``retrying`` (exponential backoff) and then ``running`` again.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectSendStream
from starlette.types import Scope

from aduib_asgi.auth.rbac import authorize_method, enforce_method_access
from aduib_asgi.context import RequestContext, current_context
from aduib_asgi.dispatcher.app import to_jsonable
from aduib_asgi.dispatcher.registry import MethodRegistry, MethodSpec
from aduib_asgi.errors import RpcError
from aduib_asgi.gate import RATE, Check, admission_of, admit
from aduib_asgi.identity import caller_scope, tenant_of
from aduib_asgi.middleware.idempotency import canonical_payload
from aduib_asgi.middleware.tenant import TENANT_CONFIG_KEY, bind_tenant, unbind_tenant
from aduib_asgi.models import (
    TaskEvent,
    TaskEventType,
    TaskProgress,
    TaskRecord,
    TaskStatus,
    TaskSubmitRequest,
)
from aduib_asgi.qos.keys import METHOD_SPEC_KEY
from aduib_asgi.storage.budget import BudgetExceeded
from aduib_asgi.storage.pubsub import follow
from aduib_asgi.tasks.store import TaskChange, TaskEntry, TaskStore, store_from_uri

__all__ = ["TASK_KEY", "TaskHandle", "TaskManager", "report_progress"]

logger = logging.getLogger("aduib_asgi.tasks")

#: ``ctx.extras`` key holding the running task's :class:`TaskHandle`.
TASK_KEY = "aduib.task"
#: ``target_method`` of the aduib-rpc 2.0.1 long-running helper (wire_contract.md §3).
LONG_TASK_METHOD = "task/submit"

_STATUS_EVENT = {
    TaskStatus.PENDING: TaskEventType.PROGRESS,
    TaskStatus.SCHEDULED: TaskEventType.PROGRESS,
    TaskStatus.RUNNING: TaskEventType.STARTED,
    TaskStatus.RETRYING: TaskEventType.RETRYING,
    TaskStatus.SUCCEEDED: TaskEventType.COMPLETED,
    TaskStatus.FAILED: TaskEventType.FAILED,
    TaskStatus.CANCELED: TaskEventType.CANCELED,
}


def _now_ms() -> int:
    return int(time.time() * 1000)


class TaskHandle:
    """What a running handler can do with its task (``ctx.extras["aduib.task"]``)."""

    __slots__ = ("_entry", "_manager")

    def __init__(self, manager: TaskManager, entry: TaskEntry) -> None:
        self._manager = manager
        self._entry = entry

    @property
    def task_id(self) -> str:
        return self._entry.task_id

    @property
    def attempt(self) -> int:
        return self._entry.record.attempt

    async def progress(self, current: int, total: int, message: str | None = None) -> None:
        """Record progress and emit a ``progress`` event."""
        rec = self._entry.record
        rec.progress = TaskProgress(
            current=current, total=total, message=message,
            percentage=(100.0 * current / total) if total else None,
        )
        await self._manager._save_and_emit(self._entry, TaskEventType.PROGRESS)


async def report_progress(current: int, total: int, message: str | None = None) -> None:
    """Report progress from inside a task handler (no-op outside a task)."""
    ctx = current_context.get()
    handle = ctx.extras.get(TASK_KEY) if ctx is not None else None
    if isinstance(handle, TaskHandle):
        await handle.progress(current, total, message)


class TaskManager:
    """Runs submitted tasks on ``workers`` workers while :meth:`running` is entered.

    Targets are methods of ``registry``, called with the task's ``params`` as
    ``data`` and a context carrying the submitter's tenant and principal.
    """

    def __init__(
        self,
        registry: MethodRegistry,
        store: TaskStore | str | None = None,
        *,
        workers: int = 4,
        retry_initial_delay_ms: float = 100.0,
        retry_multiplier: float = 2.0,
        retry_max_delay_ms: float = 10_000.0,
        lease_ttl: float = 15.0,
        poll_interval: float = 1.0,
        cancel_wait: float = 5.0,
        max_active_per_tenant: int | None = 1000,
        listen_for_changes: bool = True,
        admission: Check | None = None,
        store_options: dict[str, Any] | None = None,
    ) -> None:
        self.registry = registry
        #: Unfinished tasks one tenant may have submitted here (None: no cap);
        #: past it Submit answers 429 / 5021.
        self.max_active_per_tenant = max_active_per_tenant
        self._active: dict[str, set[str]] = {}
        self._owns_store = store is None or isinstance(store, str)
        #: ``store_options``: for a store made from a URI (``budget``, ``per_tenant``...).
        self.store: TaskStore = store if store is not None and not isinstance(store, str) \
            else store_from_uri(store, **(store_options or {}))
        self.workers = workers
        self.retry_initial_delay_ms = retry_initial_delay_ms
        self.retry_multiplier = retry_multiplier
        self.retry_max_delay_ms = retry_max_delay_ms
        self.lease_ttl = lease_ttl
        self.poll_interval = poll_interval
        self.cancel_wait = cancel_wait
        self.owner = f"{uuid.uuid4()}"
        self._seq = itertools.count()
        self._ready: list[tuple[int, int, str]] = []  # (-priority, seq, id)
        self._delayed: list[tuple[int, int, str, int]] = []  # (due_ms, seq, id, priority)
        self._wake: anyio.Event | None = None
        self._owned: set[str] = set()
        self._running: dict[str, anyio.CancelScope] = {}
        self._cancel_reasons: dict[str, str | None] = {}
        self._done: dict[str, anyio.Event] = {}
        self._subs: dict[str, list[MemoryObjectSendStream[tuple[int, TaskEvent]]]] = {}
        #: Relay other managers' saves from the store's change notifications (Redis
        #: pub/sub) at once; without them, or when off, the polls
        #: (``poll_interval`` for subscribers, ``lease_ttl / 3`` for cancels) do it.
        self.listen_for_changes = listen_for_changes
        #: The admission decision (:mod:`aduib_asgi.gate`) every task run passes, so a
        #: task holds a slot of its method's bulkheads like an HTTP call of it.
        #: Taken from the app's lifespan (an admission layer in front), else learnt
        #: from the first submission through one; settable.
        self.admission: Check | None = admission
        self._started = False

    # -- lifecycle -------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started

    @asynccontextmanager
    async def running(self) -> AsyncIterator[TaskManager]:
        """Start the workers, recover orphaned tasks; on exit stop and hand tasks back."""
        self._wake = anyio.Event()
        async with anyio.create_task_group() as tg:
            await self._recover()
            for _ in range(self.workers):
                tg.start_soon(self._worker)
            tg.start_soon(self._maintain)
            changes = getattr(self.store, "changes", None)
            if self.listen_for_changes and changes is not None:
                tg.start_soon(self._listen, changes)
            self._started = True
            try:
                yield self
            finally:
                self._started = False
                tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._hand_back()
            if self._owns_store:  # created from a URI: its connections are ours to close
                await self.store.aclose()

    def backoff_ms(self, attempt: int) -> int:
        """Delay before the attempt after ``attempt`` (1-based) failed."""
        delay = self.retry_initial_delay_ms * self.retry_multiplier ** max(0, attempt - 1)
        return int(min(delay, self.retry_max_delay_ms))

    # -- API used by the endpoints ------------------------------------------------------

    async def submit(self, req: TaskSubmitRequest, ctx: RequestContext | None,
                     scope: Scope | None = None) -> TaskEntry:
        """Validate and store a task, then queue it; returns the (possibly existing) entry.

        The target method passes the gate (:mod:`aduib_asgi.gate`) as a call of it
        would — tenant, auth, rate limit — before anything is stored; admission
        (its bulkheads) applies when the task runs.
        """
        if not self._started:
            raise RpcError(5002, "The task workers are not running")
        target, params = req.target_method, req.params
        if target == LONG_TASK_METHOD:  # 2.0.1 long-running helper: a whole request dump
            inner = params or {}
            method, data = inner.get("method"), inner.get("data")
            if not isinstance(method, str) or not (data is None or isinstance(data, dict)):
                raise RpcError(2003, "task/submit needs params.method and object params.data",
                               details=[{"type": "value_error", "field": "params.method",
                                         "reason": "missing or not a string"}])
            target, params = method, data
        spec = self.registry.resolve(target)
        if spec.streaming:
            raise RpcError(2000, f"{target} is a streaming method and cannot run as a task")
        tenant = tenant_of(ctx)
        enforce_method_access(spec.method, spec.options, ctx)
        authorize_method(ctx, spec.method)  # the auth layer's pattern rules for the target
        if ctx is not None and ctx.deferred:
            async with admit(ctx, spec.method, scope, until=RATE):
                pass
            if self.admission is None:  # the app's bulkheads, for the task runs
                self.admission = admission_of(ctx)
        rec = TaskRecord(
            task_id=str(uuid.uuid4()), target_method=target, params=params,
            status=TaskStatus.PENDING, priority=req.priority, created_at_ms=_now_ms(),
            scheduled_at_ms=req.scheduled_at_ms, max_attempts=req.max_attempts,
            timeout_ms=req.timeout_ms, tenant_id=tenant, metadata=req.metadata,
        )
        entry = TaskEntry(
            record=rec,
            principal=ctx.principal if ctx is not None else None,
            roles=list(ctx.roles) if ctx is not None else [],
            scopes=list(ctx.scopes) if ctx is not None else [],
            tenant_config=_tenant_config(ctx),
            trace_id=ctx.trace_id if ctx is not None else None,
        )
        # scoped like every client-held key: tenant + principal (client address if anonymous)
        key = f"{caller_scope(ctx)}\x1f{req.idempotency_key}" if req.idempotency_key else None
        active = self._active.setdefault(tenant, set())
        limit = self.max_active_per_tenant
        if limit is not None and len(active) >= limit and not key:
            raise RpcError(5021, f"Tenant {tenant!r} has {limit} unfinished tasks; "
                                 "wait for some to finish", headers={"Retry-After": "1"})
        stored = await self.store.create(entry, key)
        if stored.task_id != entry.task_id:
            if _fingerprint(stored.record.target_method, stored.record.params) \
                    != _fingerprint(target, params):
                raise RpcError(
                    4011, "This task idempotency key was used with another method or params",
                    http_status=422,
                    details=[{"type": "conflict", "field": "idempotency_key",
                              "reason": "method or params fingerprint mismatch"}])
            return stored
        if limit is not None and len(active) >= limit:
            await self._finish_canceled(entry, "tenant task quota exceeded")
            raise RpcError(5021, f"Tenant {tenant!r} has {limit} unfinished tasks; "
                                 "wait for some to finish", headers={"Retry-After": "1"})
        active.add(entry.task_id)
        await self._schedule(entry)
        return entry

    async def get(self, task_id: str, ctx: RequestContext | None) -> TaskEntry:
        """The task, if it exists and belongs to the caller's tenant (else 4000).

        Reading, cancelling or following a task needs the same rights as calling
        its method (roles, scopes, the auth layer's rules): a task id alone does
        not hand a protected result to anyone in the tenant.
        """
        entry = await self.store.get(task_id)
        if entry is None or entry.record.tenant_id != tenant_of(ctx):
            raise RpcError(4000, "Task not found")
        if ctx is not None:
            target = entry.record.target_method or ""
            spec = self.registry.get(target)
            if spec is not None:
                enforce_method_access(spec.method, spec.options, ctx)
            # the auth layer's pattern rules need only the name (the method may be
            # registered on another instance sharing the store)
            authorize_method(ctx, spec.method if spec is not None else target)
        return entry

    async def cancel(
        self, task_id: str, ctx: RequestContext | None, reason: str | None = None
    ) -> tuple[TaskEntry, bool]:
        """Cancel a task (stopping it if it runs here); ``(entry, canceled)``."""
        entry = await self.get(task_id, ctx)
        if entry.record.status.terminal:
            return entry, False
        scope = self._running.get(task_id)
        if scope is not None:
            self._cancel_reasons[task_id] = reason
            done = self._done.get(task_id)
            scope.cancel()
            if done is not None:
                with anyio.move_on_after(self.cancel_wait):
                    await done.wait()
            entry = await self.get(task_id, ctx)
            return entry, entry.record.status is TaskStatus.CANCELED
        await self._finish_canceled(entry, reason)
        return entry, True

    async def events(
        self, entry: TaskEntry, kinds: set[str] | None = None
    ) -> AsyncIterator[TaskEvent]:
        """The task's current state as an event, then live events until a terminal one."""
        tid = entry.task_id
        send, recv = anyio.create_memory_object_stream[tuple[int, TaskEvent]](64)
        self._subs.setdefault(tid, []).append(send)
        try:
            current = await self.store.get(tid) or entry
            last = current.rev
            event: TaskEvent | None = _event(current)
            while True:
                if event is not None:
                    if kinds is None or event.event in kinds:
                        yield event
                    if event.task.status.terminal:
                        return
                got: tuple[int, TaskEvent] | None = None
                with anyio.move_on_after(self.poll_interval):
                    got = await recv.receive()
                if got is None:  # nothing local: the task may run in another manager
                    latest = await self.store.get(tid)
                    if latest is None:
                        return
                    got = (latest.rev, _event(latest))
                event = None
                if got[0] > last:
                    last, event = got
        finally:
            subs = self._subs.get(tid)
            if subs is not None:
                subs.remove(send)
                if not subs:
                    del self._subs[tid]
            send.close()
            recv.close()

    # -- queue ---------------------------------------------------------------------------

    async def _schedule(self, entry: TaskEntry) -> None:
        rec = entry.record
        if not await self.store.claim(entry.task_id, self.owner, self.lease_ttl):
            return
        self._owned.add(entry.task_id)
        rec.status = TaskStatus.SCHEDULED
        await self._save_and_emit(entry, TaskEventType.PROGRESS)
        self._push(entry.task_id, int(rec.priority), rec.scheduled_at_ms)

    def _push(self, task_id: str, priority: int, due_ms: int | None) -> None:
        if due_ms is not None and due_ms > _now_ms():
            heapq.heappush(self._delayed, (due_ms, next(self._seq), task_id, priority))
        else:
            heapq.heappush(self._ready, (-priority, next(self._seq), task_id))
        if self._wake is not None:
            self._wake.set()

    async def _next(self) -> str:
        while True:
            now = _now_ms()
            while self._delayed and self._delayed[0][0] <= now:
                _, seq, tid, prio = heapq.heappop(self._delayed)
                heapq.heappush(self._ready, (-prio, seq, tid))
            if self._ready:
                return heapq.heappop(self._ready)[2]
            wait = (self._delayed[0][0] - now) / 1000.0 if self._delayed else math.inf
            if self._wake is None or self._wake.is_set():
                self._wake = anyio.Event()
            with anyio.move_on_after(wait):
                await self._wake.wait()

    async def _worker(self) -> None:
        while True:
            tid = await self._next()
            try:
                await self._run(tid)
            except Exception:  # a store failure must not kill the worker
                logger.exception("task %s: worker error", tid)

    # -- running ----------------------------------------------------------------------

    async def _run(self, tid: str) -> None:
        scope = anyio.CancelScope()
        done = anyio.Event()
        self._running[tid] = scope  # before any await, so a cancel always finds it
        self._done[tid] = done
        finished = False
        try:
            entry = await self.store.get(tid)
            if entry is None or entry.record.status.terminal:
                self._owned.discard(tid)
                finished = True
                return
            rec = entry.record
            spec = self.registry.get(rec.target_method or "")
            rec.status = TaskStatus.RUNNING
            rec.attempt += 1
            rec.started_at_ms = _now_ms()
            rec.next_retry_at_ms = None
            await self._save_and_emit(entry, TaskEventType.STARTED)
            error: RpcError | None = None
            result: Any = None
            with scope:
                try:
                    if spec is None:
                        raise RpcError(4001, f"Method {rec.target_method!r} not found")
                    result = await self._call(spec, entry)
                except RpcError as exc:
                    error = exc
                except Exception as exc:
                    logger.error("task %s: unhandled %s", tid, type(exc).__name__,
                                 exc_info=(type(exc), exc, exc.__traceback__))
                    error = RpcError(5000)
            with anyio.CancelScope(shield=True):
                if scope.cancelled_caught:
                    await self._finish_canceled(entry, self._cancel_reasons.pop(tid, None))
                elif error is None:
                    rec.status = TaskStatus.SUCCEEDED
                    rec.result = result
                    rec.completed_at_ms = _now_ms()
                    await self._finish(entry, TaskEventType.COMPLETED)
                elif error.code >= 5000 and rec.attempt < rec.max_attempts:
                    delay = self.backoff_ms(rec.attempt)
                    now = _now_ms()
                    rec.status = TaskStatus.RETRYING
                    rec.error = error.to_dict()
                    rec.next_retry_at_ms = now + delay
                    await self._save_and_emit(entry, TaskEventType.RETRYING, now)
                    self._push(tid, int(rec.priority), now + delay)
                else:
                    rec.status = TaskStatus.FAILED
                    rec.error = error.to_dict()
                    rec.completed_at_ms = _now_ms()
                    await self._finish(entry, TaskEventType.FAILED)
                finished = True
        finally:
            self._running.pop(tid, None)
            self._done.pop(tid, None)
            self._cancel_reasons.pop(tid, None)  # a cancel that came too late
            done.set()
            if not finished:  # manager shutting down: hand the task back (see _hand_back)
                self._owned.add(tid)

    async def _call(self, spec: MethodSpec, entry: TaskEntry) -> Any:
        rec = entry.record
        ctx = RequestContext(request_id=rec.task_id)
        ctx.method = spec.method
        ctx.service, ctx.handler = spec.service, spec.handler
        ctx.tenant_id = rec.tenant_id
        ctx.principal = entry.principal
        ctx.roles = tuple(entry.roles)
        ctx.scopes = tuple(entry.scopes)
        ctx.priority = int(rec.priority)
        ctx.trace_id = entry.trace_id
        ctx.extras[TASK_KEY] = TaskHandle(self, entry)
        ctx.extras[METHOD_SPEC_KEY] = spec
        timeout = rec.timeout_ms / 1000.0 if rec.timeout_ms else math.inf
        if timeout != math.inf:
            ctx.deadline = time.monotonic() + timeout
        token = current_context.set(ctx)
        # the handler sees its tenant as in a request: get_tenant(), tenant_setting()
        tenant_token, config_token = bind_tenant(rec.tenant_id, entry.tenant_config)
        release = None
        try:
            if self.admission is not None:  # its method's bulkheads, as for any call
                release = await self.admission.enter(ctx, None, spec.method)
            with anyio.move_on_after(timeout) as tscope:
                data = spec.parse_input(rec.params)
                args = (data, ctx) if spec.takes_context else (data,)
                if spec.is_async:
                    result = await spec.func(*args)
                else:
                    result = await anyio.to_thread.run_sync(
                        spec.func, *args, abandon_on_cancel=True)
            if tscope.cancelled_caught:
                raise RpcError(5003, f"Task attempt exceeded {rec.timeout_ms} ms")
            return to_jsonable(result)
        finally:
            if release is not None:
                release()
            unbind_tenant(tenant_token, config_token)
            current_context.reset(token)

    async def _finish_canceled(self, entry: TaskEntry, reason: str | None) -> None:
        rec = entry.record
        rec.status = TaskStatus.CANCELED
        rec.completed_at_ms = _now_ms()
        rec.error = {"name": "CANCELED", "message": reason or "Task canceled"}
        await self._finish(entry, TaskEventType.CANCELED)

    async def _finish(self, entry: TaskEntry, event: TaskEventType) -> None:
        tenant = entry.record.tenant_id or "default"
        active = self._active.get(tenant)
        if active is not None:
            active.discard(entry.task_id)
            if not active:
                del self._active[tenant]
        latest = await self.store.get(entry.task_id)
        self._owned.discard(entry.task_id)
        if latest is not None and latest.record.status is TaskStatus.CANCELED \
                and entry.record.status is not TaskStatus.CANCELED:
            pass  # canceled through another manager meanwhile: keep that
        else:
            if latest is not None:
                entry.rev = max(entry.rev, latest.rev)
                if latest.record.status is TaskStatus.CANCELED:  # keep the canceller's reason
                    entry.record.error = latest.record.error
                    entry.record.completed_at_ms = latest.record.completed_at_ms
            try:
                await self._save_and_emit(entry, event)
            except BudgetExceeded as exc:  # the result does not fit the tenant's budget
                rec = entry.record
                rec.result = None
                rec.status = TaskStatus.FAILED
                rec.error = RpcError(5021, "The task's result was not retained: "
                                     f"{exc.message}").to_dict()
                await self._save_and_emit(entry, TaskEventType.FAILED)
        await self.store.release(entry.task_id, self.owner)

    async def _save_and_emit(
        self, entry: TaskEntry, event: TaskEventType, ts: int | None = None
    ) -> None:
        await self.store.save(entry)
        subs = self._subs.get(entry.task_id)
        if not subs:
            return
        item = (entry.rev, TaskEvent(event=event.value, task=entry.record.model_copy(deep=True),
                                     timestamp_ms=ts if ts is not None else _now_ms()))
        for send in subs:
            with contextlib.suppress(anyio.WouldBlock):  # slow subscribers poll the store
                send.send_nowait(item)

    # -- other managers' changes ---------------------------------------------------------

    async def _listen(self, changes: Any) -> None:
        """Relay the store's change notifications; reconnect with backoff when they fail
        (:func:`aduib_asgi.storage.pubsub.follow`)."""
        await follow(changes, self._changed, "task change notifications")

    async def _changed(self, change: TaskChange) -> None:
        if change.own:  # ours: local subscribers already have it
            return
        tid = change.task_id
        scope = self._running.get(tid)
        if scope is not None and change.status == TaskStatus.CANCELED.value:
            # acted on from the notification itself: our own concurrent
            # save may already have overwritten the stored status
            self._cancel_reasons.setdefault(tid, "canceled through another instance")
            scope.cancel()
        if tid in self._subs:
            await self._relay(tid)

    async def _relay(self, tid: str) -> None:
        """Another manager saved ``tid``: pass its state to the local subscribers."""
        try:
            latest = await self.store.get(tid)
        except Exception as exc:
            logger.warning("task %s: could not read a change (%s)", tid, type(exc).__name__)
            return
        if latest is None:
            return
        subs = self._subs.get(tid)
        if subs:
            item = (latest.rev, _event(latest))
            for send in subs:
                with contextlib.suppress(anyio.WouldBlock):  # slow subscribers poll the store
                    send.send_nowait(item)

    # -- ownership, recovery, shutdown ------------------------------------------------

    async def _recover(self) -> None:
        for tid in await self.store.orphans():
            if not await self.store.claim(tid, self.owner, self.lease_ttl):
                continue
            entry = await self.store.get(tid)
            if entry is None or entry.record.status.terminal:
                await self.store.release(tid, self.owner)
                continue
            rec = entry.record
            if rec.status is TaskStatus.RUNNING:  # its attempt was interrupted
                rec.attempt = max(0, rec.attempt - 1)
            logger.info("task %s: recovered (was %s)", tid, rec.status)
            self._owned.add(tid)
            rec.status = TaskStatus.SCHEDULED
            await self._save_and_emit(entry, TaskEventType.PROGRESS)
            self._push(tid, int(rec.priority), rec.next_retry_at_ms or rec.scheduled_at_ms)

    async def _maintain(self) -> None:
        """Renew our leases, stop tasks canceled elsewhere, adopt orphans."""
        while True:
            await anyio.sleep(self.lease_ttl / 3)
            try:
                await self.store.renew(self.owner, list(self._owned), self.lease_ttl)
                for tid, scope in list(self._running.items()):
                    latest = await self.store.get(tid)
                    if latest is not None and latest.record.status is TaskStatus.CANCELED:
                        scope.cancel()
                await self._recover()
            except Exception:
                logger.exception("task store maintenance failed")

    async def _hand_back(self) -> None:
        """On shutdown: unfinished tasks go back to ``pending`` for the next manager."""
        for tid in list(self._owned):
            try:
                entry = await self.store.get(tid)
                if entry is not None and not entry.record.status.terminal:
                    if entry.record.status is TaskStatus.RUNNING:
                        entry.record.attempt = max(0, entry.record.attempt - 1)
                    entry.record.status = TaskStatus.PENDING
                    await self.store.save(entry)
                await self.store.release(tid, self.owner)
            except Exception:
                logger.exception("task %s: could not hand back on shutdown", tid)
        self._owned.clear()
        self._ready.clear()
        self._delayed.clear()


def _fingerprint(method: str | None, params: Any) -> bytes:
    """What a reuse of a task idempotency key must repeat: the method and its params."""
    return (method or "").encode() + b"\n" + canonical_payload(params)


def _tenant_config(ctx: RequestContext | None) -> dict[str, Any] | None:
    config = ctx.extras.get(TENANT_CONFIG_KEY) if ctx is not None else None
    return dict(config) if config else None


def _event_of(entry: TaskEntry) -> str:
    return _STATUS_EVENT[entry.record.status].value


def _event(entry: TaskEntry) -> TaskEvent:
    return TaskEvent(event=_event_of(entry), task=entry.record, timestamp_ms=_now_ms())
