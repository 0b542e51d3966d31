"""Redis pub/sub between instances: one subscription iterator and one reconnecting follower.

Used by the task store (task changes: another instance saved a task) and the
cancel bus (``rpc/cancel`` for a call running on another instance), so both
listen, reconnect and back off the same way.

- :func:`messages` — every message on some channels, over one pub/sub
  connection for the iterator's lifetime; a connection error ends the iteration
  with the exception.
- :func:`follow` — feed a handler from a message source forever, reconnecting
  with exponential backoff (0.5 s doubling to 2 s, so it is back within about
  2 s of Redis, or of a Sentinel/Cluster failover) and logging once per outage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio

from aduib_asgi.storage.redis_url import pubsub_for, subscription_moved

__all__ = ["follow", "messages"]

logger = logging.getLogger("aduib_asgi.storage.pubsub")
T = TypeVar("T")
#: The longest wait (seconds) between two reconnection attempts.
MAX_BACKOFF = 2.0
#: How often (seconds) a subscription checks it is still on the primary (Sentinel,
#: Cluster: a failover that demotes its server without closing the connection).
CHECK_EVERY = 1.0


async def messages(client: Any, *channels: str,
                   subscribed: Callable[[], None] | None = None,
                   ) -> AsyncIterator[tuple[str, str]]:
    """``(channel, data)`` of every message published on ``channels`` (a
    ``redis.asyncio`` client created with ``decode_responses=True``).

    ``subscribed`` is called once the subscription is in place (from then on no
    message is missed). On a Redis Cluster the channels should share a hash tag:
    the subscription is on the node owning the first one's slot
    (:func:`~aduib_asgi.storage.redis_url.pubsub_for`).
    """
    pubsub = await pubsub_for(client, channels[0], ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(*channels)
        if subscribed is not None:
            subscribed()
        checked = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if time.monotonic() - checked >= CHECK_EVERY:
                checked = time.monotonic()
                if await subscription_moved(client, pubsub, channels[0]):
                    raise ConnectionError("the subscribed server is no longer the primary")
            if message is None or message.get("type") != "message":
                continue
            yield str(message["channel"]), str(message["data"])
    finally:
        with anyio.move_on_after(1.0, shield=True):  # also when cancelled (shutdown)
            await pubsub.aclose()
            owner = getattr(pubsub, "owner", None)
            if owner is not None:  # a cluster node's own connection
                await owner.aclose()


async def follow(source: Callable[[], AsyncIterator[T]],
                 handle: Callable[[T], Awaitable[None]], what: str) -> None:
    """Pass every item of ``source()`` to ``handle``, reopening the source with
    backoff when it fails; runs until cancelled. ``what`` names it in the logs."""
    delay = 0.5
    while True:
        try:
            async for item in source():
                delay = 0.5
                await handle(item)
        except Exception as exc:
            logger.warning("%s interrupted (%s: %s); reconnecting in %.1f s", what,
                           type(exc).__name__, exc, delay)
        await anyio.sleep(delay)
        delay = min(delay * 2, MAX_BACKOFF)
