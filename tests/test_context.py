"""RequestContext helpers."""

from __future__ import annotations

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
