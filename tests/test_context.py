"""RequestContext helpers."""

from __future__ import annotations

from typing import Any

from aduib_asgi.context import RequestContext


def test_header_lookup_and_repeated_headers_are_joined() -> None:
    ctx = RequestContext(raw_headers=[(b"accept", b"a/b"), (b"x-one", b"1"),
                                      (b"accept", b"c/d")])
    assert ctx.header(b"accept") == b"a/b, c/d"
    assert ctx.header(b"x-one") == b"1"
    assert ctx.header(b"missing") is None
    single = RequestContext(raw_headers=[(b"accept", b"a/b")])
    assert single.header(b"accept") == b"a/b"


def test_deadline_only_tightens() -> None:
    ctx = RequestContext()
    assert ctx.remaining_ms() is None
    ctx.set_deadline_ms(1000)
    first = ctx.deadline
    ctx.set_deadline_ms(5000)
    assert ctx.deadline == first
    remaining = ctx.remaining_ms()
    assert remaining is not None and 0 < remaining <= 1000


def test_timestamp_is_the_wall_clock_in_whole_ms_at_creation() -> None:
    import time

    before = int(time.time() * 1000)
    ctx = RequestContext()
    after = int(time.time() * 1000)
    assert type(ctx.timestamp_ms) is int
    assert before <= ctx.timestamp_ms <= after + 1
    assert ctx.started <= time.monotonic()


def _emitting(ctx: RequestContext) -> tuple[list[Any], Any]:
    from aduib_asgi.context import _HeaderEmitter

    sent: list[Any] = []

    class Awaited:
        def __await__(self) -> Any:
            return iter(())

    def send(message: Any) -> Any:
        sent.append(message)
        return Awaited()

    return sent, _HeaderEmitter(ctx, send)


def test_emitter_merges_pending_headers_into_every_kind_of_response_start() -> None:
    ctx = RequestContext()
    ctx.add_response_header(b"x-a", b"1")
    sent, emit = _emitting(ctx)
    body = {"type": "http.response.body", "body": b"x"}
    for t in ("http.response.start", "websocket.http.response.start"):
        emit({"type": t, "status": 200, "headers": [(b"content-type", b"text/plain")]})
    emit(body)
    assert [m["headers"] for m in sent[:2]] == [[(b"content-type", b"text/plain"),
                                                  (b"x-a", b"1")]] * 2
    assert sent[2] is body


def test_emitter_returns_the_inner_sends_awaitable_and_passes_messages_as_they_are() -> None:
    """No coroutine of the emitter's own per message; nothing pending: the start is untouched."""
    ctx = RequestContext()
    sent, emit = _emitting(ctx)
    start = {"type": "http.response.start", "status": 200, "headers": []}
    result = emit(start)
    assert type(result).__name__ == "Awaited"
    assert sent == [start] and sent[0] is start


def test_create_context_is_what_the_creator_stores_in_the_scope() -> None:
    from aduib_asgi.context import CONTEXT_KEY, SERVER_ID, SERVER_ID_KEY, create_context

    scope: dict[str, Any] = {"type": "http", "headers": ((b"x-a", b"1"),)}
    ctx = create_context(scope)
    assert scope[CONTEXT_KEY] is ctx
    assert type(scope["headers"]) is list and ctx.raw_headers is scope["headers"]
    assert ctx.header(b"x-a") == b"1" and ctx.server_id == SERVER_ID
    named = create_context({"type": "http", "headers": [], SERVER_ID_KEY: "node-7"})
    assert named.server_id == "node-7" and named.raw_headers == []


def test_header_emitter_is_found_by_emitter_parts() -> None:
    from aduib_asgi.context import emitter_parts, header_emitter

    ctx = RequestContext()

    async def send(message: Any) -> None:
        return None

    assert emitter_parts(header_emitter(ctx, send)) == (send, ctx)
    assert emitter_parts(send) == (send, None)


def test_header_values_agree_with_header_before_and_after_the_map_exists() -> None:
    raw = [(b"accept", b"a/b"), (b"x-one", b"1"), (b"accept", b"c/d"), (b"x-two", b"")]
    names = (b"accept", b"x-two", b"missing", b"x-one")
    scanned = RequestContext(raw_headers=raw).header_values(names)
    mapped = RequestContext(raw_headers=raw)
    expected = [mapped.header(n) for n in names]
    assert scanned == expected == [b"a/b, c/d", b"", None, b"1"]
    assert mapped.header_values(names) == expected
    mapped.add_envelope_headers({"x-env": "e"})  # only the map has them
    assert mapped.header_values((b"x-env",)) == [b"e"]
