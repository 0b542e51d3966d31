"""One byte budget for stored client-driven state: per tenant, and in total.

Every store that keeps state a client can make it keep (idempotency records,
task records and results, rate-limit buckets) charges the bytes it holds here
and refunds them when the state goes (expiry, release). A charge that would take
a tenant past ``per_tenant`` bytes, or everyone past ``total`` bytes, is refused
with :func:`budget_exceeded` (429 / 5021 + ``Retry-After``): new work of that
tenant waits, and nothing stored is evicted early to make room (exactly-once
would silently break). See docs/limits.md.

:class:`ByteBudget` counts in this process (memory stores; share one instance
between them). :class:`RedisByteBudget` counts what the instances sharing a
Redis make it hold: one sorted set of charged records scored by their expiry,
and the per-tenant sums next to it, updated by one script; expired records are
refunded by whoever charges next, so the counters follow the records' TTLs.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from aduib_asgi.errors import RpcError

__all__ = [
    "DEFAULT_PER_TENANT",
    "DEFAULT_RETRY_AFTER",
    "DEFAULT_TOTAL",
    "RECORD_OVERHEAD",
    "BudgetExceeded",
    "ByteBudget",
    "RedisByteBudget",
    "budget_exceeded",
    "queue",
]

#: Default bytes one tenant may make a store hold.
DEFAULT_PER_TENANT = 64 * 1024 * 1024
#: Default bytes all tenants together may make the stores hold.
DEFAULT_TOTAL = 512 * 1024 * 1024
#: Default ``Retry-After`` (seconds) when a budget refuses.
DEFAULT_RETRY_AFTER = 30
#: Bytes charged per stored record on top of its payload (keys, bookkeeping).
RECORD_OVERHEAD = 256


class BudgetExceeded(RpcError):
    """429 / 5021: storing this would take a tenant (or all) past the byte budget."""

    default_code = 5021


def budget_exceeded(tenant: str, what: str, *, total: bool,
                    retry_after: int = DEFAULT_RETRY_AFTER) -> BudgetExceeded:
    """The one error every store raises at a byte bound."""
    scope = "the server's storage" if total else f"tenant {tenant!r}'s storage budget"
    return BudgetExceeded(
        5021, f"Cannot store {what}: {scope} is full; retry later",
        headers={"Retry-After": str(retry_after)},
        details=[{"type": "budget", "field": None,
                  "reason": "total byte budget" if total else "tenant byte budget"}],
    )


class ByteBudget:
    """Bytes held per tenant and in total, in this process (thread-safe).

    ``charge`` raises :class:`BudgetExceeded` unless ``force``; ``refund`` gives
    bytes back. Tenants holding nothing take no memory here.
    """

    __slots__ = ("_lock", "_used", "per_tenant", "retry_after", "total", "used_total")

    def __init__(self, *, per_tenant: int = DEFAULT_PER_TENANT, total: int = DEFAULT_TOTAL,
                 retry_after: int = DEFAULT_RETRY_AFTER) -> None:
        if per_tenant < 1 or total < 1:
            raise ValueError("budgets must be positive")
        self.per_tenant = per_tenant
        self.total = total
        self.retry_after = retry_after
        self.used_total = 0
        self._used: dict[str, int] = {}
        self._lock = threading.Lock()

    def used(self, tenant: str) -> int:
        """Bytes ``tenant`` holds now."""
        return self._used.get(tenant, 0)

    def fits(self, tenant: str, nbytes: int) -> bool:
        """Whether ``nbytes`` more could be charged to ``tenant`` now."""
        return (self._used.get(tenant, 0) + nbytes <= self.per_tenant
                and self.used_total + nbytes <= self.total)

    def charge(self, tenant: str, nbytes: int, what: str = "this", *,
               force: bool = False, headroom: int = 0) -> None:
        """Count ``nbytes`` more for ``tenant``; refused past a bound (unless ``force``).

        ``headroom``: bytes that must stay free after the charge (room for the
        response of the work being admitted; at most half the tenant's budget).
        """
        with self._lock:
            used = self._used.get(tenant, 0)
            if not force and nbytes > 0:
                need = nbytes + min(headroom, self.per_tenant // 2)
                if used + need > self.per_tenant:
                    raise budget_exceeded(tenant, what, total=False,
                                          retry_after=self.retry_after)
                if self.used_total + need > self.total:
                    raise budget_exceeded(tenant, what, total=True,
                                          retry_after=self.retry_after)
            self._set(tenant, used + nbytes)
            self.used_total += nbytes

    def refund(self, tenant: str, nbytes: int) -> None:
        """Give back ``nbytes`` of ``tenant``'s."""
        with self._lock:
            self._set(tenant, self._used.get(tenant, 0) - nbytes)
            self.used_total -= nbytes

    def _set(self, tenant: str, value: int) -> None:
        if value > 0:
            self._used[tenant] = value
        else:
            self._used.pop(tenant, None)


# KEYS[1]: sorted set of charged records (member "tenant\x1fid", score: expiry ms)
# KEYS[2]: hash: "m:" .. member -> bytes; "t:" .. tenant -> sum; "*" -> sum of all
# ARGV: now_ms, tenant, id, bytes (0: refund), expiry_ms ("+inf" allowed), per_tenant,
#       total, force ("1"/"0"), headroom (bytes that must stay free after the charge)
# Returns 1 (done), -1 (tenant full), -2 (total full).
_CHARGE = """
local z, h = KEYS[1], KEYS[2]
local expired = redis.call('ZRANGEBYSCORE', z, '-inf', ARGV[1], 'LIMIT', 0, 256)
for _, m in ipairs(expired) do
  local s = tonumber(redis.call('HGET', h, 'm:' .. m) or '0')
  local t = string.match(m, '^(.-)\\31')
  if t then redis.call('HINCRBY', h, 't:' .. t, -s) end
  redis.call('HINCRBY', h, '*', -s)
  redis.call('HDEL', h, 'm:' .. m)
  redis.call('ZREM', z, m)
end
local m = ARGV[2] .. '\\31' .. ARGV[3]
local tkey = 't:' .. ARGV[2]
local new = tonumber(ARGV[4])
local delta = new - tonumber(redis.call('HGET', h, 'm:' .. m) or '0')
if delta > 0 and ARGV[8] ~= '1' then
  local need = delta + tonumber(ARGV[9])
  if tonumber(redis.call('HGET', h, tkey) or '0') + need > tonumber(ARGV[6]) then
    return -1
  end
  if tonumber(redis.call('HGET', h, '*') or '0') + need > tonumber(ARGV[7]) then
    return -2
  end
end
if new == 0 then
  redis.call('ZREM', z, m)
  redis.call('HDEL', h, 'm:' .. m)
else
  redis.call('ZADD', z, ARGV[5], m)
  redis.call('HSET', h, 'm:' .. m, new)
end
if redis.call('HINCRBY', h, tkey, delta) <= 0 then redis.call('HDEL', h, tkey) end
redis.call('HINCRBY', h, '*', delta)
return 1
"""


class RedisByteBudget:
    """The byte budget of what the instances sharing one Redis make it hold.

    Each stored record is charged as one member of a sorted set scored by the
    record's expiry (epoch ms), with its size in a hash next to the per-tenant
    sums, so the sums follow the TTLs: every charge first refunds up to 256
    expired records. Charging a record again replaces its earlier charge. Both
    keys share one hash tag (``{budget}``), so the script also runs on a Redis
    Cluster. A charge is queued on the same (non-transactional) pipeline as the
    write it pays for, so it costs no extra round trip; a write that fails
    after its charge is over-counted until the charge's expiry, never under.
    """

    def __init__(self, client: Any, *, prefix: str = "aduib:", per_tenant: int =
                 DEFAULT_PER_TENANT, total: int = DEFAULT_TOTAL,
                 retry_after: int = DEFAULT_RETRY_AFTER) -> None:
        if per_tenant < 1 or total < 1:
            raise ValueError("budgets must be positive")
        self.client = client
        self.per_tenant = per_tenant
        self.total = total
        self.retry_after = retry_after
        self.zkey = prefix + "{budget}:records"
        self.hkey = prefix + "{budget}:sums"
        self._charge = client.register_script(_CHARGE)

    def _args(self, tenant: str, record_id: str, nbytes: int, expires_at: float,
              force: bool, headroom: int) -> list[Any]:
        expiry = "+inf" if math.isinf(expires_at) else str(int(expires_at * 1000))
        return [int(time.time() * 1000), _clean(tenant), record_id, nbytes, expiry,
                self.per_tenant, self.total, "1" if force else "0",
                min(headroom, self.per_tenant // 2)]

    async def charge(self, tenant: str, record_id: str, nbytes: int, expires_at: float,
                     what: str = "this", *, force: bool = False, headroom: int = 0,
                     pipe: Any = None) -> None:
        """Charge ``record_id`` ``nbytes`` (replacing its earlier charge) until
        ``expires_at`` (epoch seconds); past a bound :class:`BudgetExceeded`.

        ``pipe``: only queue the charge on that pipeline (with the write it pays
        for, one round trip); pass its reply to :meth:`check`.
        """
        args = self._args(tenant, record_id, max(1, nbytes), expires_at, force, headroom)
        if pipe is not None:
            queue(pipe, _CHARGE, [self.zkey, self.hkey], args)
            return
        self.check(await self._charge(keys=[self.zkey, self.hkey], args=args), tenant, what)

    def check(self, result: Any, tenant: str, what: str = "this") -> None:
        """Raise :class:`BudgetExceeded` when a charge's reply says it was refused."""
        if int(result) < 0:
            raise budget_exceeded(tenant, what, total=int(result) == -2,
                                  retry_after=self.retry_after)

    async def refund(self, tenant: str, record_id: str, *, pipe: Any = None) -> None:
        """Give back the charge of ``record_id`` (``pipe``: queue it there)."""
        args = self._args(tenant, record_id, 0, 0.0, True, 0)
        if pipe is not None:
            queue(pipe, _CHARGE, [self.zkey, self.hkey], args)
            return
        await self._charge(keys=[self.zkey, self.hkey], args=args)

    async def used(self, tenant: str) -> int:
        """Bytes ``tenant`` holds in Redis now (expired charges refunded at the next charge)."""
        value = await self.client.hget(self.hkey, "t:" + _clean(tenant))
        return int(value or 0)


def queue(pipe: Any, script: str, keys: list[str], args: list[Any]) -> None:
    """Queue ``script`` on a redis-py pipeline as EVAL: registering it as a Script
    object would make every ``execute`` first ask the server ``SCRIPT EXISTS``
    (one more round trip); EVAL sends the text and needs no loading."""
    pipe.eval(script, len(keys), *keys, *args)


def _clean(tenant: str) -> str:
    return tenant.replace("\x1f", "?")
