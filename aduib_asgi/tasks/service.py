"""The TaskService endpoints: ``{base}/v2/TaskService/{Submit,Query,Cancel,Subscribe}``.

Bodies are the task models as the aduib-rpc 2.0.1 client sends them
(wire_contract.md §3); answers are the bare response models (not envelopes) in
the negotiated codec. Errors are the standard error envelope with the table's
non-2xx status (a 2xx error body would fail the 2.0.1 client's validation).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.types import Receive, Scope, Send

from aduib_asgi.body import ClientDisconnected
from aduib_asgi.context import RequestContext
from aduib_asgi.errors import RpcError, details_from_validation
from aduib_asgi.identity import client_address
from aduib_asgi.models import (
    TaskCancelRequest,
    TaskCancelResponse,
    TaskQueryRequest,
    TaskQueryResponse,
    TaskSubmitRequest,
    TaskSubmitResponse,
    TaskSubscribeRequest,
)
from aduib_asgi.responses import encode_envelope
from aduib_asgi.streaming import raw_item, select_framing, send_stream_error, stream_response
from aduib_asgi.tasks.manager import TaskManager
from aduib_asgi.tasks.store import TaskStore

if TYPE_CHECKING:
    from aduib_asgi.dispatcher.app import RpcDispatcher

__all__ = ["TaskService", "install_task_service"]

M = TypeVar("M", bound=BaseModel)
PREFIX = "/v2/TaskService/"


async def read_model(
    dispatcher: RpcDispatcher, receive: Receive, ctx: RequestContext, model: type[M]
) -> M:
    """The request body validated as ``model`` (1002 with one detail per bad field)."""
    payload = await dispatcher.read_payload(receive, ctx)
    if not isinstance(payload, dict):
        raise RpcError(1002, "The request body must be an object",
                       details=[{"type": "type_error", "field": "", "reason": "not an object"}])
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise RpcError(1002, f"Invalid {model.__name__}",
                       details=details_from_validation(exc)) from None


async def send_model(send: Send, ctx: RequestContext, model: BaseModel, status: int = 200) -> None:
    """Send a bare response model in the negotiated codec."""
    body, content_type = encode_envelope(ctx, model.model_dump(mode="json", exclude_none=True))
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode("latin-1"))]})
    await send({"type": "http.response.body", "body": body})


class TaskService:
    """Binds a :class:`TaskManager` to a dispatcher's routes."""

    def __init__(self, dispatcher: RpcDispatcher, manager: TaskManager) -> None:
        self.dispatcher = dispatcher
        self.manager = manager

    async def submit(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        req = await read_model(self.dispatcher, receive, ctx, TaskSubmitRequest)
        client_address(scope, ctx)  # anonymous task keys are scoped by it
        entry = await self.manager.submit(req, ctx, scope)
        rec = entry.record
        await send_model(send, ctx, TaskSubmitResponse(
            task_id=rec.task_id, status=rec.status, created_at_ms=rec.created_at_ms))

    async def query(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        req = await read_model(self.dispatcher, receive, ctx, TaskQueryRequest)
        entry = await self.manager.get(req.task_id, ctx)
        await send_model(send, ctx, TaskQueryResponse(task=entry.record))

    async def cancel(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        req = await read_model(self.dispatcher, receive, ctx, TaskCancelRequest)
        entry, canceled = await self.manager.cancel(req.task_id, ctx, req.reason)
        await send_model(send, ctx, TaskCancelResponse(
            task_id=entry.task_id, status=entry.record.status, canceled=canceled))

    async def subscribe(
        self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext
    ) -> None:
        """TaskEvents as SSE (the streaming module's framing), closed after the terminal one."""
        cfg = self.dispatcher.streaming
        try:
            select_framing(ctx, cfg.default_framing)
            req = await read_model(self.dispatcher, receive, ctx, TaskSubscribeRequest)
            entry = await self.manager.get(req.task_id, ctx)  # unknown id: a plain 404 first
        except ClientDisconnected:
            return
        except Exception as exc:
            await send_stream_error(scope, send, exc, ctx=ctx)
            return
        kinds = {str(k) for k in req.events} if req.events else None
        await stream_response(scope, receive, send, ctx, self.manager.events(entry, kinds),
                              default_framing=cfg.default_framing,
                              heartbeat_interval=cfg.heartbeat_interval, item_encoder=raw_item)


def install_task_service(
    dispatcher: RpcDispatcher,
    store: TaskStore | str | None = None,
    **manager_options: Any,
) -> TaskManager:
    """Serve the TaskService on ``dispatcher`` with a new :class:`TaskManager`.

    ``store`` is a :class:`TaskStore` or a URI (``memory://``, ``redis://...``).
    The workers run while the app's ASGI lifespan is up; the store's ping becomes
    the ``tasks`` health check when the health service is installed.
    """
    manager = TaskManager(dispatcher.registry, store, **manager_options)
    service = TaskService(dispatcher, manager)
    for name, endpoint in (("Submit", service.submit), ("Query", service.query),
                           ("Cancel", service.cancel), ("Subscribe", service.subscribe)):
        dispatcher.add_route(PREFIX + name, endpoint, methods=("POST",))
    def running() -> AbstractAsyncContextManager[TaskManager]:
        gate = getattr(dispatcher, "lifespan_gate", None)
        admission = gate.admission() if gate is not None else None
        if manager.admission is None and admission is not None:
            manager.admission = admission  # task runs hold their method's bulkheads
        return manager.running()

    dispatcher.lifespan_hooks.append(running)
    health = getattr(dispatcher, "health", None)
    if health is not None:
        health.add("tasks", manager.store.ping)
    return manager
