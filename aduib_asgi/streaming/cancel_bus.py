"""Cross-instance cancel: ``rpc/cancel`` reaching any instance cancels the call where it runs.

Several instances (or uvicorn workers) on one Redis each keep their running
calls in their own :class:`~aduib_asgi.streaming.inflight.InflightRegistry`.
A cancel is tried locally first (no Redis round trip). Only when the call is not
running here is it published on the Redis channel ``{prefix}{cancel}`` (tenant,
caller scope, request id, reason); every instance listening there looks the
call up in its own registry — the same caller scoping as a local cancel: tenant
and principal, and the client address for anonymous callers — cancels it if it
runs there, and answers on the asking instance's reply channel. The asking
instance answers the client as for a local cancel (200 ``canceled: true``) on
the first positive answer, 404 / 4000 once every other instance said no (or
after ``reply_timeout``), and 503 / 5002 when Redis cannot be reached.

A call that is never cancelled costs nothing here: registering a call never
touches Redis. The pub/sub listening reuses :mod:`aduib_asgi.storage.pubsub`
(the task store's change notifications run on the same machinery).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

from aduib_asgi.errors import RpcError
from aduib_asgi.storage.pubsub import follow, messages
from aduib_asgi.storage.redis_url import publish, redis_client
from aduib_asgi.storage.timeout import call_within

if TYPE_CHECKING:
    from aduib_asgi.dispatcher.app import RpcDispatcher
    from aduib_asgi.streaming.inflight import InflightRegistry

__all__ = ["DEFAULT_MAX_PENDING", "DEFAULT_MAX_PENDING_PER_TENANT", "MAX_REMOTE_ID",
           "RedisCancelBus", "install_cancel_bus"]

logger = logging.getLogger("aduib_asgi.streaming.cancel_bus")

#: Cancels of this instance waiting for the other instances' answers, at most
#: (in all, and per tenant).
DEFAULT_MAX_PENDING = 1024
DEFAULT_MAX_PENDING_PER_TENANT = 256
#: Longer request ids are only looked up locally (never published).
MAX_REMOTE_ID = 1024


class _Pending:
    __slots__ = ("answers", "done", "expected", "found")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.found = False
        self.answers = 0
        self.expected = -1  # unknown until the publish returns


class RedisCancelBus:
    """Cancels for calls on other instances, over Redis pub/sub.

    ``client`` is a ``redis.asyncio`` client created with ``decode_responses=True``
    (:meth:`from_url` makes one); every Redis call is bounded by ``timeout``.
    """

    def __init__(self, client: Any, registry: InflightRegistry, *,
                 prefix: str = "aduib:", timeout: float = 1.0, reply_timeout: float = 1.0,
                 max_pending: int = DEFAULT_MAX_PENDING,
                 max_pending_per_tenant: int = DEFAULT_MAX_PENDING_PER_TENANT) -> None:
        self.client = client
        self.registry = registry
        self.timeout = timeout
        self.reply_timeout = reply_timeout
        self.max_pending = max_pending
        self.max_pending_per_tenant = max_pending_per_tenant
        self._tenants: dict[str, int] = {}
        self.instance = uuid.uuid4().hex
        # one hash tag: on a Redis Cluster both live on the node owning its slot
        self.channel = prefix + "{cancel}"
        self.reply_channel = f"{self.channel}:reply:{self.instance}"
        self._pending: dict[str, _Pending] = {}
        self.ready = anyio.Event()  # the first subscription is in place
        #: Subscribed now: off while the subscription is down (Redis, a failover);
        #: then answers could not reach us, so a cancel is 503, not a wrong 404.
        self.listening = False

    @classmethod
    def from_url(cls, url: str, registry: InflightRegistry, *, timeout: float = 1.0,
                 **options: Any) -> RedisCancelBus:
        """A bus on the Redis at ``url`` (any form of
        :mod:`aduib_asgi.storage.redis_url`: single, Sentinel, Cluster)."""
        client = redis_client(url, timeout=timeout, decode_responses=True)
        return cls(client, registry, timeout=timeout, **options)

    # -- asking ------------------------------------------------------------------------

    async def cancel_remote(self, tenant: str, owner: str, request_id: str,
                            reason: str | None) -> bool:
        """Cancel the call on whichever other instance runs it; False if none does."""
        if len(request_id) > MAX_REMOTE_ID:
            return False
        n = self._tenants.get(tenant, 0)
        if len(self._pending) >= self.max_pending or n >= self.max_pending_per_tenant:
            raise RpcError(5021, "Too many cancels waiting for other instances",
                           headers={"Retry-After": "1"})
        if not self.listening:  # the others' answers could not reach us
            raise RpcError(5002, "Cancel cannot hear the other instances now (Redis "
                                 "subscription down)", headers={"Retry-After": "1"})
        nonce = uuid.uuid4().hex
        pending = self._pending[nonce] = _Pending()
        self._tenants[tenant] = n + 1
        message = json.dumps({"t": tenant, "o": owner, "id": request_id, "r": reason,
                              "from": self.instance, "n": nonce})
        try:
            try:
                receivers = await call_within(self.timeout, publish, self.client,
                                              self.channel, message)
            except Exception as exc:
                logger.warning("cancel could not reach the other instances (%s: %s)",
                               type(exc).__name__, exc)
                raise RpcError(5002, "Cancel could not reach the other instances",
                               headers={"Retry-After": "1"}) from None
            # every listening instance answers, this one excepted
            pending.expected = int(receivers) - 1
            if pending.expected <= 0:
                return False
            if pending.answers >= pending.expected:
                return pending.found
            with anyio.move_on_after(self.reply_timeout):
                await pending.done.wait()
            return pending.found
        finally:
            del self._pending[nonce]
            left = self._tenants[tenant] - 1
            if left:
                self._tenants[tenant] = left
            else:
                del self._tenants[tenant]

    # -- answering ---------------------------------------------------------------------

    async def _on_message(self, item: tuple[str, str]) -> None:
        channel, data = item
        try:
            msg = json.loads(data)
            if not isinstance(msg, dict):
                return
            if channel == self.reply_channel:
                self._answered(msg)
            elif msg.get("from") != self.instance:
                await self._asked(msg)
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("ignoring a malformed cancel message (%s)", type(exc).__name__)

    def _answered(self, msg: dict[str, Any]) -> None:
        pending = self._pending.get(str(msg["n"]))
        if pending is None:
            return
        pending.answers += 1
        if msg.get("f"):
            pending.found = True
        if pending.found or (0 <= pending.expected <= pending.answers):
            pending.done.set()

    async def _asked(self, msg: dict[str, Any]) -> None:
        reason = msg.get("r")
        found = self.registry.cancel_local(
            str(msg["t"]), str(msg["o"]), str(msg["id"]),
            reason if isinstance(reason, str) else None)
        reply = json.dumps({"n": msg["n"], "f": 1 if found else 0})
        try:
            await call_within(self.timeout, publish, self.client,
                              f"{self.channel}:reply:{msg['from']}", reply)
        except Exception as exc:
            logger.warning("could not answer a cancel (%s: %s)", type(exc).__name__, exc)

    async def _source(self) -> AsyncIterator[tuple[str, str]]:
        try:
            async for item in messages(self.client, self.channel, self.reply_channel,
                                       subscribed=self._subscribed):
                yield item
        finally:
            self.listening = False

    def _subscribed(self) -> None:
        self.listening = True
        self.ready.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[RedisCancelBus]:
        """Listen while the block runs (an ASGI lifespan hook); waits up to
        ``timeout`` for the subscription, then keeps trying in the background."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow, self._source, self._on_message, "cancel bus")
            with anyio.move_on_after(self.timeout):
                await self.ready.wait()
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()
        with anyio.move_on_after(1.0, shield=True):
            await self.client.aclose()


def install_cancel_bus(dispatcher: RpcDispatcher, url: str, **options: Any) -> RedisCancelBus:
    """Make ``rpc/cancel`` on ``dispatcher`` reach calls on every instance sharing the
    Redis at ``url``; the bus listens while the app's ASGI lifespan is up."""
    inflight = dispatcher.streaming.inflight
    bus = RedisCancelBus.from_url(url, inflight, **options)
    inflight.bus = bus
    hook: Callable[[], Any] = bus.running
    dispatcher.lifespan_hooks.append(hook)
    return bus
