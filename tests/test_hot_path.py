"""The per-request shortcuts of the hot path give exactly what the slow way gives.

Speed itself is measured in benchmarks/ (``aduib-asgi bench``); these tests pin
down that each shortcut is invisible: same objects, same errors, same bytes.
"""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message, Receive, Scope, Send

from aduib_asgi.context import CONTEXT_KEY, RequestContext, current_context, run_with_context
from aduib_asgi.models import RequestMetadata
from aduib_asgi.models.envelope import stamped_metadata


def test_stamped_metadata_equals_the_validated_model() -> None:
    fast = stamped_metadata(1234)
    slow = RequestMetadata(timestamp_ms=1234)
    assert fast == slow
    assert repr(fast) == repr(slow)
    assert fast.model_fields_set == slow.model_fields_set == {"timestamp_ms"}
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast.model_dump(exclude_unset=True) == {"timestamp_ms": 1234}


def test_stamped_metadata_has_its_own_mutable_defaults() -> None:
    a = stamped_metadata(1)
    a.headers["x-a"] = "1"
    assert stamped_metadata(2).headers == {}
    a.timestamp_ms = 5  # assignable like any model
    assert a.timestamp_ms == 5


def test_run_with_context_adds_no_frame_once_the_context_exists() -> None:
    asyncio.run(_no_frame())


async def _no_frame() -> None:
    seen: list[RequestContext] = []

    async def handler(scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        seen.append(ctx)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        return None

    ctx = RequestContext()
    scope: Scope = {"type": "http", "headers": [], CONTEXT_KEY: ctx}
    awaitable = run_with_context(handler, scope, receive, send)
    # the handler's own coroutine, not a wrapper around it
    assert getattr(awaitable, "cr_code", None) is handler.__code__
    await awaitable
    assert seen == [ctx]

    fresh: Scope = {"type": "http", "headers": [(b"x-a", b"1")]}
    await run_with_context(handler, fresh, receive, send)  # the creator binds and stores it
    assert fresh[CONTEXT_KEY] is seen[1] and seen[1].header(b"x-a") == b"1"
    assert current_context.get() is None  # reset after the call


def _wrappers(f: object) -> int:
    n = 0
    while hasattr(f, "__wrapped__"):
        f = f.__wrapped__
        n += 1
    return n


def test_budgeted_storage_adds_no_error_wrapper_levels() -> None:
    from limits.aio.storage import MemoryStorage

    from aduib_asgi.storage.ratelimit import BudgetedMemoryStorage

    for name in ("incr", "get", "get_expiry", "check", "reset", "clear", "acquire_entry",
                 "get_moving_window", "acquire_sliding_window_entry", "get_sliding_window"):
        assert _wrappers(getattr(BudgetedMemoryStorage, name)) <= \
            _wrappers(getattr(MemoryStorage, name)), name


def test_budgeted_storage_still_counts_and_charges() -> None:
    from aduib_asgi.storage.budget import BudgetExceeded, ByteBudget
    from aduib_asgi.storage.ratelimit import BudgetedMemoryStorage

    async def main() -> None:
        storage = BudgetedMemoryStorage(budget=ByteBudget(per_tenant=700, total=10_000),
                                        wrap_exceptions=True)
        assert await storage.incr("k1", 60) == 1
        assert await storage.incr("k1", 60, amount=2) == 3
        assert await storage.get("k1") == 3
        with pytest.raises(BudgetExceeded):  # a second bucket passes the tenant's bytes
            await storage.incr("k2" * 100, 60)

    asyncio.run(main())


def test_the_unary_calls_task_is_asyncios_current_task_on_both_loops() -> None:
    """The cancel registration's task lookup is ``asyncio.current_task()`` (None outside
    a running asyncio loop, where a ``CancelScope`` is used instead)."""
    from aduib_asgi.streaming.endpoints import _asyncio_task

    async def check() -> None:
        assert _asyncio_task() is asyncio.current_task() is not None

        async def own() -> object:
            return _asyncio_task()

        other = asyncio.ensure_future(own())
        assert await other is other  # another task sees itself

    asyncio.run(check())
    asyncio.run(check())  # a new loop in the same thread: the remembered one is stale
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(check())
    assert _asyncio_task() is None

    # Another thread's loop in a task step at the same time: still our own task.
    import threading

    in_step, release = threading.Event(), threading.Event()

    async def busy() -> None:
        in_step.set()
        release.wait(10)  # blocks inside the step (releases the GIL)

    other = threading.Thread(target=asyncio.run, args=(busy(),))
    other.start()
    try:
        assert in_step.wait(10)
        asyncio.run(check())
        uvloop.run(check())
        assert _asyncio_task() is None
    finally:
        release.set()
        other.join(10)


_BAD_AND_GOOD_ENVELOPES: list[object] = [
    {"aduib_rpc": "2.0", "id": "a", "method": "rpc.v2/Echo/echo", "data": {"x": 1}},
    {"method": "rpc.v2/Echo/echo"},
    {"aduib_rpc": None, "id": None, "method": "rpc.v2/S.v-1/h_2-x"},
    {"aduib_rpc": "2.0", "id": 7, "method": "rpc.v2/Echo/echo", "extra": [1, 2]},
    {"aduib_rpc": "2.0"},
    {"aduib_rpc": 2, "method": "rpc.v2/Echo/echo"},
    {"aduib_rpc": "two", "method": "rpc.v2/Echo/echo"},
    {"method": 5},
    {"method": "rpc.v2/Echo"},
    {"method": "rpc.v2/Echo/echo\n"},
    {"method": "rpc.v2/" + "a" * 300 + "/b"},
    {"method": "rpc.v2/Echo/echo", "data": [1]},
    {"method": "rpc.v2/Echo/echo", "id": True},
    {"method": "rpc.v2/Echo/echo", "id": {"x": 1}},
    {"method": "rpc.v2/Echo/echo", "supported_versions": ["2.0", "x"]},
    {"method": "rpc.v2/Echo/echo", "trace_context": {"trace_id": "bad"}},
    {"method": "rpc.v2/Echo/echo", "metadata": {"timestamp_ms": "soon", "headers": None}},
    {"method": "rpc.v2/Echo/echo", "qos": {"priority": 9, "timeout_ms": -1}},
    {"method": "rpc.v2/Echo/echo", "qos": {"retry": {"max_attempts": 0}}, "meta": 3},
]


@pytest.mark.parametrize("payload", _BAD_AND_GOOD_ENVELOPES)
def test_envelope_validation_by_the_core_validator_equals_model_validate(payload: object) -> None:
    """parse_envelope calls ``RpcRequest.__pydantic_validator__.validate_python``: the
    same model, or the same errors, as ``RpcRequest.model_validate``."""
    from pydantic import ValidationError

    from aduib_asgi.errors import details_from_validation
    from aduib_asgi.models import RpcRequest

    def run(fn: object) -> object:
        try:
            env = fn(payload)  # type: ignore[operator]
        except ValidationError as exc:
            return ("error", exc.json(include_url=False), details_from_validation(exc))
        dumped = env.model_dump()
        dumped.pop("id") if isinstance(payload, dict) and not payload.get("id") else None
        return ("ok", dumped, env.model_fields_set)

    assert run(RpcRequest.__pydantic_validator__.validate_python) == \
        run(RpcRequest.model_validate)


@pytest.mark.parametrize("method", ["rpc.v2/Echo/echo", "rpc.v2/S.v-1/h_2-x", "rpc.v2/_/_",
                                    "rpc.v2/a.b.c/D-e"])
def test_split_valid_method_equals_the_regex_groups(method: str) -> None:
    from aduib_asgi.models import parse_method
    from aduib_asgi.models.envelope import split_valid_method

    assert split_valid_method(method) == parse_method(method)


def test_stamp_metadata_equals_assigning_the_field() -> None:
    from aduib_asgi.models import RpcRequest
    from aduib_asgi.models.envelope import stamp_metadata

    fast = RpcRequest.model_validate({"method": "rpc.v2/Echo/echo", "id": "x"})
    slow = RpcRequest.model_validate({"method": "rpc.v2/Echo/echo", "id": "x"})
    stamp_metadata(fast, 42)
    slow.metadata = stamped_metadata(42)
    assert fast == slow and fast.model_fields_set == slow.model_fields_set
    assert fast.model_dump_json(exclude_unset=True) == slow.model_dump_json(exclude_unset=True)


def test_inflight_calls_sharing_an_id_are_each_cancelled_and_removed_alone() -> None:
    """Entries under one (tenant, id) form a chain: a cancel reaches every call of that
    caller under the id (and only that caller's), and removing any one — first,
    middle, last, or one never registered — leaves the others and the counts right."""
    from aduib_asgi.streaming.inflight import InflightRegistry

    class Call:
        def __init__(self) -> None:
            self.reasons: list[str | None] = []

        def cancel(self, reason: str | None = None) -> None:
            self.reasons.append(reason)

    def ctx(principal: str) -> RequestContext:
        c = RequestContext(request_id="same")
        c.tenant_id = "t"
        c.principal = principal
        return c

    for remove_order in ([0, 1, 2], [1, 0, 2], [2, 1, 0], [1, 2, 0]):
        reg = InflightRegistry()
        calls = [Call() for _ in range(3)]
        owners = ["p", "q", "p"]
        keys = [reg.register(ctx(o), c) for o, c in zip(owners, calls, strict=True)]
        assert len(reg) == 3 and "same" in reg and reg._tenants is None  # not counted yet
        assert reg.cancel_local("t", "t\x1fp:p", "same", "why") is True
        assert [c.reasons for c in calls] == [["why"], [], ["why"]]
        reg.unregister(keys[0], Call())  # not registered: nothing changes
        assert len(reg) == 3
        for done, i in enumerate(remove_order, start=1):
            reg.unregister(keys[i], calls[i])
            assert len(reg) == 3 - done
            left = [j for j in range(3) if j not in remove_order[:done]]
            for c in calls:
                c.reasons.clear()
            reg.cancel_local("t", "t\x1fp:p", "same")
            reg.cancel_local("t", "t\x1fp:q", "same")
            assert [bool(c.reasons) for c in calls] == [j in left for j in range(3)]
        assert len(reg) == 0 and reg._calls == {} and reg._tenants is None
        assert reg.cancel_local("t", "t\x1fp:p", "same") is False


def test_an_empty_request_id_is_registered_as_it_is() -> None:
    from aduib_asgi.streaming.inflight import InflightRegistry

    class Call:
        def cancel(self, reason: str | None = None) -> None:
            return None

    reg = InflightRegistry()
    c = RequestContext(request_id="")
    assert reg.register(c, Call()) == ""
    c2 = RequestContext()
    key = reg.register(c2, Call())
    assert key == c2.request_id and c2.request_id  # a fresh id was minted
    assert "" in reg and key in reg and 5 not in reg and [1] not in reg


_BODY_SEQUENCES: list[list[Message]] = [
    [{"type": "http.request", "body": b'{"a": 1}', "more_body": False}],
    [{"type": "http.request", "body": b'{"a": 1}'}],
    [{"type": "http.request", "body": b'{"a"', "more_body": True},
     {"type": "http.request", "body": b": 1}", "more_body": False}],
    [{"type": "http.request", "more_body": True},
     {"type": "http.request", "body": b'{"a": 1}', "more_body": False}],
    [{"type": "http.request", "body": b"", "more_body": False}],
    [{"type": "http.request"}],
    [{"type": "http.request", "body": b'{"a": "' + b"x" * 64 + b'"}', "more_body": False}],
    [{"type": "http.request", "body": b"[1,", "more_body": True},
     {"type": "http.request", "body": b"2" * 64 + b"]", "more_body": False}],
    [{"type": "http.disconnect"}],
    [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}],
    [{"type": "http.unknown"}, {"type": "http.request", "body": b"[1]", "more_body": False}],
]


@pytest.mark.parametrize("messages", _BODY_SEQUENCES)
def test_the_dispatchers_one_message_body_equals_read_body(messages: list[Message]) -> None:
    """read_payload takes a body sent in one message as it is, and leaves everything else
    (more chunks, a disconnect, a body past the limit) to read_body: same payload, or
    the same error, as reading the body with read_body alone."""
    from aduib_asgi.body import ClientDisconnected, read_body
    from aduib_asgi.codecs import JSON
    from aduib_asgi.dispatcher import RpcDispatcher
    from aduib_asgi.errors import RpcError

    def receiver() -> Receive:
        it = iter(messages)

        async def receive() -> Message:
            return next(it)

        return receive

    def outcome(exc: BaseException) -> object:
        if isinstance(exc, RpcError):
            return ("rpc", exc.code, exc.message, exc.http_status)
        return type(exc).__name__

    async def via_dispatcher() -> object:
        ctx = RequestContext(raw_headers=[(b"content-type", b"application/json")])
        try:
            return ("ok", await RpcDispatcher(max_body_size=40).read_payload(receiver(), ctx),
                    ctx.body)
        except (RpcError, ClientDisconnected) as exc:
            return outcome(exc)

    async def via_read_body() -> object:
        try:
            body = await read_body(receiver(), limit=40)
            if not body:
                raise RpcError(1002, "Empty request body")
            return ("ok", JSON.decode(body), body)
        except (RpcError, ClientDisconnected) as exc:
            return outcome(exc)

    assert asyncio.run(via_dispatcher()) == asyncio.run(via_read_body())


def test_the_method_check_remembers_at_most_its_bound_of_valid_names() -> None:
    from pydantic import ValidationError

    from aduib_asgi.models import RpcRequest
    from aduib_asgi.models import envelope as models

    bound = models._MAX_VALID_METHODS
    for i in range(bound + 50):
        RpcRequest.model_validate({"method": f"rpc.v2/Flood/m{i}"})
    assert len(models._VALID_METHODS) <= bound
    for bad in ("rpc.v2/Flood/m1\n", "rpc.v2/Flood", "rpc.v2/" + "a" * 300 + "/b", "x/y/z"):
        with pytest.raises(ValidationError):
            RpcRequest.model_validate({"method": bad})
    assert RpcRequest.model_validate({"method": "rpc.v2/Fresh/name"}).method == \
        "rpc.v2/Fresh/name"
    assert RpcRequest.model_validate({"method": "rpc.v2/Flood/m1"}).method == "rpc.v2/Flood/m1"


class _ReferenceRegistry:
    """The in-flight registry's rules, written plainly: calls keyed by (tenant, id),
    counted per tenant at every registration (what InflightRegistry must equal)."""

    def __init__(self, max_per_tenant: int, max_total: int) -> None:
        self.calls: dict[tuple[str, str], list[tuple[object, RequestContext]]] = {}
        self.max_per_tenant, self.max_total = max_per_tenant, max_total

    def register(self, ctx: RequestContext, call: object) -> str | None:
        from aduib_asgi.identity import tenant_of

        tenant = tenant_of(ctx)
        n = sum(len(v) for (t, _), v in self.calls.items() if t == tenant)
        size = sum(len(v) for v in self.calls.values())
        if n >= self.max_per_tenant or size >= self.max_total:
            return "Too many running calls" + (
                f" for tenant {tenant!r}" if n >= self.max_per_tenant else "")
        self.calls.setdefault((tenant, ctx.ensure_request_id()), []).insert(0, (call, ctx))
        return None

    def unregister(self, call: object) -> None:
        for key, chain in list(self.calls.items()):
            for i, (c, _) in enumerate(chain):
                if c is call:
                    del chain[i]
                    if not chain:
                        del self.calls[key]
                    return

    def cancel(self, tenant: str, owner: str, rid: str) -> list[object]:
        from aduib_asgi.identity import caller_scope

        return [c for c, ctx in self.calls.get((tenant, rid), [])
                if caller_scope(ctx, None) == owner]

    def __len__(self) -> int:
        return sum(len(v) for v in self.calls.values())


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(("max_per_tenant", "max_total"), [(4, 9), (3, 100), (10, 5), (1, 3),
                                                             (6, 6)])
def test_the_inflight_registry_equals_its_reference_rules(seed: int, max_per_tenant: int,
                                                          max_total: int) -> None:
    """Random registrations, removals and cancels (shared ids across tenants and
    callers, bounds reached and left again): the same refusals with the same messages,
    sizes and cancelled calls as the plain rules — whether or not calls are being
    counted per tenant at that moment."""
    import random

    from aduib_asgi.errors import RpcError
    from aduib_asgi.streaming.inflight import InflightRegistry

    class Call:
        def __init__(self) -> None:
            self.cancelled = 0

        def cancel(self, reason: str | None = None) -> None:
            self.cancelled += 1

    rnd = random.Random(seed)
    reg = InflightRegistry(max_per_tenant=max_per_tenant, max_total=max_total)
    ref = _ReferenceRegistry(max_per_tenant, max_total)
    running: list[tuple[Call, str]] = []
    for _ in range(400):
        op = rnd.random()
        if op < 0.55:
            ctx = RequestContext(request_id=rnd.choice(["a", "b", "c", None]),
                                 raw_headers=[(b"x-tenant-id", rnd.choice([b"t1", b"t2"]))])
            if rnd.random() < 0.3:
                ctx.tenant_id = rnd.choice(["t1", "t3"])
            ctx.principal = rnd.choice(["p", "q"])
            call = Call()
            expected = ref.register(ctx, call)
            try:
                key = reg.register(ctx, call)
            except RpcError as exc:
                assert exc.code == 5021 and exc.message == expected
            else:
                assert expected is None
                running.append((call, key))
        elif op < 0.9 and running:
            call, key = running.pop(rnd.randrange(len(running)))
            reg.unregister(key, call)
            ref.unregister(call)
        else:
            tenant, principal = rnd.choice(["t1", "t2", "t3"]), rnd.choice(["p", "q"])
            rid = rnd.choice(["a", "b", "c"])
            owner = f"{tenant}\x1fp:{principal}"
            want = ref.cancel(tenant, owner, rid)
            before = [c.cancelled for c, _ in running]
            assert reg.cancel_local(tenant, owner, rid) is bool(want)
            hit = [c for (c, _), b in zip(running, before, strict=True) if c.cancelled > b]
            assert sorted(map(id, hit)) == sorted(map(id, want))
        assert len(reg) == len(ref)
        assert all((rid in reg) == any(k[1] == rid for k in ref.calls) for rid in "abc")
    for call, key in running:
        reg.unregister(key, call)
    assert len(reg) == 0 and reg._calls == {}


def test_a_long_chain_under_one_id_is_unregistered_from_any_position() -> None:
    """Thousands of calls under one request id (clients choose ids): removing the oldest,
    a middle one and the newest neither recurses nor loses another entry."""
    from aduib_asgi.streaming.inflight import InflightRegistry

    class Call:
        def cancel(self, reason: str | None = None) -> None:
            return None

    reg = InflightRegistry(max_per_tenant=100_000)
    calls = [Call() for _ in range(5000)]
    keys = [reg.register(RequestContext(request_id="1"), c) for c in calls]
    for i in (0, 2500, 4999, 1):
        reg.unregister(keys[i], calls[i])
    assert len(reg) == 4996
    chain, e = [], reg._calls["1"]
    while e is not None:
        chain.append(e[0])
        e = e[3]
    assert chain == [c for i, c in enumerate(calls) if i not in (0, 1, 2500, 4999)][::-1]


def test_replay_receive_yields_the_body_once_then_the_real_receive() -> None:
    from aduib_asgi.body import replay_receive

    async def real() -> Message:
        return {"type": "http.disconnect"}

    async def main() -> list[Message]:
        r = replay_receive(b"abc", real)
        return [await r(), await r(), await r()]

    assert asyncio.run(main()) == [
        {"type": "http.request", "body": b"abc", "more_body": False},
        {"type": "http.disconnect"}, {"type": "http.disconnect"}]
