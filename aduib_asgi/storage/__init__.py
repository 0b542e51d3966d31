"""Idempotency stores: one small async interface, memory and Redis implementations.

A store keeps, per lookup key, either an *in-flight* reservation (fingerprint +
owner token, with a lease that expires unless renewed) or a *completed*
response (fingerprint + status, headers, body, with a TTL). :meth:`reserve` is
atomic: of many concurrent callers with one key exactly one gets the
reservation. Rate-limit storage is the ``limits`` package's own;
:mod:`aduib_asgi.storage.ratelimit` reads the quota a hit leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "IdempotencyStore",
    "Reservation",
    "StoreEntry",
    "StoredResponse",
    "idempotency_store_from_url",
]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response as it was sent: status, raw header pairs and the complete body.

    ``retained=False``: the request ran and answered ``status``, but its response
    was not kept (larger than the replay limit, or past the byte budget): a
    repeat gets 409 "not retained", never a second execution.
    """

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    retained: bool = True

    @classmethod
    def not_retained(cls, status: int) -> StoredResponse:
        """The marker kept in place of a response that was not stored."""
        return cls(status, (), b"", False)

    @property
    def size(self) -> int:
        """Bytes this response takes in a store (body, headers; bookkeeping not included)."""
        return len(self.body) + sum(len(k) + len(v) + 16 for k, v in self.headers)


@dataclass(frozen=True, slots=True)
class StoreEntry:
    """What a store holds for a key: in flight (``response is None``) or completed."""

    fingerprint: str
    token: str | None = None
    response: StoredResponse | None = None

    @property
    def completed(self) -> bool:
        return self.response is not None


@dataclass(frozen=True, slots=True)
class Reservation:
    """The outcome of :meth:`IdempotencyStore.reserve`.

    ``outcome == "reserved"``: the caller owns the key (``token``) and runs the
    request; otherwise ``entry`` is what another request left there.
    """

    outcome: Literal["reserved", "in_flight", "completed"]
    token: str | None = None
    entry: StoreEntry | None = None


@runtime_checkable
class IdempotencyStore(Protocol):
    """The async interface the idempotency layer uses; every call is short.

    ``in_process``: calls never wait on I/O (no timeout needed).
    ``needs_renewal``: reservations expire after their lease unless renewed.
    """

    in_process: bool
    needs_renewal: bool

    async def reserve(self, key: str, fingerprint: str, lease: float, *,
                      tenant: str = "default", headroom: int = 0) -> Reservation:
        """Atomically take ``key`` for ``lease`` seconds, or report what holds it.

        The record is charged to ``tenant``'s byte budget, which must keep
        ``headroom`` bytes free for the response (the replay limit): past it
        :class:`~aduib_asgi.storage.budget.BudgetExceeded` (429 / 5021) is raised.
        """
        ...

    async def renew(self, key: str, token: str, lease: float) -> bool:
        """Extend the owner's lease; False when the key is no longer ours."""
        ...

    async def complete(self, key: str, token: str, response: StoredResponse,
                       ttl: float) -> bool:
        """Replace the owner's reservation by the response, kept ``ttl`` seconds.

        A response the tenant's byte budget cannot hold is kept as
        :meth:`StoredResponse.not_retained` instead (still True: the key is done).
        """
        ...

    async def release(self, key: str, token: str) -> None:
        """Drop the owner's reservation (the request failed; a retry may run)."""
        ...

    async def get(self, key: str) -> StoreEntry | None:
        """The current entry for ``key``, if any."""
        ...

    async def wait(self, key: str, timeout: float) -> StoreEntry | None:
        """Wait up to ``timeout`` s while ``key`` is in flight; the entry then (or None)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def idempotency_store_from_url(url: str = "memory://", **options: Any) -> IdempotencyStore:
    """``memory://`` (optionally ``?max_entries=N``) or a Redis URL (``redis://``,
    ``rediss://``, ``redis+sentinel://``, ``redis+cluster://``: see
    :mod:`aduib_asgi.storage.redis_url`).

    ``budget=``: the byte budget the store charges (a
    :class:`~aduib_asgi.storage.budget.ByteBudget` for memory, a
    :class:`~aduib_asgi.storage.budget.RedisByteBudget` or its limits as
    ``per_tenant``/``total`` for Redis); a store of its own by default.
    """
    if url.startswith("memory://"):
        from urllib.parse import parse_qs, urlsplit

        from aduib_asgi.storage.memory import MemoryIdempotencyStore

        query = parse_qs(urlsplit(url).query)
        if "max_entries" in query:
            options.setdefault("max_entries", int(query["max_entries"][0]))
        per_tenant, total = options.pop("per_tenant", None), options.pop("total", None)
        if "budget" not in options and (per_tenant or total):
            from aduib_asgi.storage.budget import DEFAULT_PER_TENANT, DEFAULT_TOTAL, ByteBudget

            options["budget"] = ByteBudget(per_tenant=per_tenant or DEFAULT_PER_TENANT,
                                           total=total or DEFAULT_TOTAL)
        return MemoryIdempotencyStore(**options)
    from aduib_asgi.storage.redis_url import is_redis_url

    if is_redis_url(url):
        from aduib_asgi.storage.redis import RedisIdempotencyStore

        return RedisIdempotencyStore(url, **options)
    raise ValueError(f"unsupported idempotency store URL {url!r} (memory://, redis://, "
                     "rediss://, redis+sentinel://, redis+cluster://)")
