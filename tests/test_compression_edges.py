"""CompressionMiddleware edge cases found by the peers' suites (Starlette, starlette-compress)."""

from __future__ import annotations

import zlib
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from aduib_asgi.middleware import CompressionMiddleware


async def _noop(scope: object, receive: object, send: object) -> None:
    raise AssertionError("not called")


@pytest.mark.parametrize("levels", [{"gzip": 10}, {"zstd": 23}, {"br": 12}, {"gzip": -2},
                                    {"gzip": "6"}, {"gzip": True}, {"deflate": 6}])
def test_a_bad_level_fails_at_construction(levels: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="level"):
        CompressionMiddleware(_noop, levels=levels)  # type: ignore[arg-type]


def test_the_extreme_valid_levels_are_accepted() -> None:  # (sync: no anyio mark)
    mw = CompressionMiddleware(_noop, levels={"gzip": 9, "zstd": 22, "br": 11, "lz4": 16})
    assert mw.codings["gzip"].compress(b"x" * 1000)


# -- responses ---------------------------------------------------------------------------

BODY = b"x" * 4000


async def run(app: Any, *, ae: bytes = b"gzip", headers: Any = None,
              extensions: dict[str, Any] | None = None, minimum_size: int = 512
              ) -> list[Message]:
    """Drive ``CompressionMiddleware(app)`` once; the messages it sent."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http", "method": "GET", "path": "/", "query_string": b"",
        "headers": headers if headers is not None else [(b"accept-encoding", ae)]}
    if extensions is not None:
        scope["extensions"] = extensions
    await CompressionMiddleware(app, minimum_size=minimum_size)(scope, receive, send)
    return sent


def start_headers(sent: list[Message]) -> dict[bytes, list[bytes]]:
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    out: dict[bytes, list[bytes]] = {}
    for name, value in start["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


def app_of(status: int, headers: list[tuple[bytes, bytes]], *bodies: Message,
           trailers: bool = False) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers,
                    "trailers": trailers})
        for m in bodies:
            await send(m)

    return app


def body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


@pytest.mark.anyio
async def test_a_206_partial_response_is_never_compressed() -> None:
    """Content-Range counts bytes of the unencoded representation (RFC 9110 §14.4)."""
    sent = await run(app_of(206, [(b"content-type", b"text/plain"),
                                  (b"content-range", b"bytes 0-1999/4000"),
                                  (b"content-length", b"2000")], body(BODY[:2000])))
    h = start_headers(sent)
    assert b"content-encoding" not in h and h[b"content-length"] == [b"2000"]
    assert sent[-1]["body"] == BODY[:2000]


@pytest.mark.anyio
async def test_content_range_on_another_status_is_left_alone_too() -> None:
    sent = await run(app_of(200, [(b"content-type", b"text/plain"),
                                  (b"content-range", b"bytes 0-3999/4000")], body(BODY)))
    assert b"content-encoding" not in start_headers(sent) and sent[-1]["body"] == BODY


@pytest.mark.parametrize("status", [204, 205, 304])
@pytest.mark.anyio
async def test_bodyless_statuses_get_no_coded_body(status: int) -> None:
    sent = await run(app_of(status, [(b"content-type", b"text/plain")], body(b"")),
                     minimum_size=0)
    assert b"content-encoding" not in start_headers(sent)
    assert sent[-1]["body"] == b""  # (a 205 used to get a 20-byte gzip member)


@pytest.mark.parametrize("send_type", ["http.response.pathsend", "http.response.zerocopysend"])
@pytest.mark.anyio
async def test_an_event_stream_answered_with_a_file_goes_out_unlabelled(send_type: str) -> None:
    """With pathsend offered, an event stream's start waits for its first message: a
    file goes out raw (it used to be labelled gzip while the raw bytes followed)."""
    file_msg: Message = {"type": send_type, "path": "/tmp/x"} \
        if send_type.endswith("pathsend") else {"type": send_type, "file": 0}
    sent = await run(app_of(200, [(b"content-type", b"text/event-stream")], file_msg),
                     extensions={"http.response.pathsend": {},
                                 "http.response.zerocopysend": {}})
    assert [m["type"] for m in sent] == ["http.response.start", send_type]
    assert b"content-encoding" not in start_headers(sent)


@pytest.mark.anyio
async def test_with_pathsend_offered_an_event_stream_is_still_compressed_per_event() -> None:
    sent = await run(app_of(200, [(b"content-type", b"text/event-stream")],
                            body(b"data: 1\n\n" * 80, more=True), body(b"data: 2\n\n" * 80)),
                     extensions={"http.response.pathsend": {}})
    assert start_headers(sent)[b"content-encoding"] == [b"gzip"]
    d = zlib.decompressobj(31)
    assert d.decompress(sent[1]["body"]) == b"data: 1\n\n" * 80  # flushed per message
    assert d.decompress(sent[2]["body"]) == b"data: 2\n\n" * 80 and d.eof


@pytest.mark.anyio
async def test_zerocopysend_is_not_offered_to_an_app_whose_response_may_be_coded() -> None:
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(dict(scope["extensions"]))
        await app_of(200, [(b"content-type", b"text/plain")], body(BODY))(scope, receive, send)

    ext = {"http.response.zerocopysend": {}, "http.response.pathsend": {}}
    sent = await run(app, extensions=ext)
    assert seen == [{"http.response.pathsend": {}}]
    assert "http.response.zerocopysend" in ext  # the server's scope is not changed
    assert start_headers(sent)[b"content-encoding"] == [b"gzip"]
    seen.clear()
    await run(app, ae=b"identity", extensions=ext)
    assert "http.response.zerocopysend" in seen[0]  # nothing to code: still offered


@pytest.mark.anyio
async def test_a_file_after_a_committed_coded_stream_start_is_an_error_not_raw_bytes() -> None:
    """Without pathsend in the scope the stream commits at once; a file send after that
    (the server did not offer it) fails instead of going out under a false label."""
    app = app_of(200, [(b"content-type", b"text/event-stream")],
                 {"type": "http.response.pathsend", "path": "/tmp/x"})
    with pytest.raises(RuntimeError, match="pathsend"):
        await run(app)


@pytest.mark.parametrize("more", [False, True])
@pytest.mark.anyio
async def test_a_response_with_trailers_gets_no_content_length(more: bool) -> None:
    bodies = [body(BODY, more=True), body(b"")] if more else [body(BODY)]
    trailer: Message = {"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")]}
    sent = await run(app_of(200, [(b"content-type", b"text/plain")], *bodies, trailer,
                            trailers=True))
    h = start_headers(sent)
    assert h[b"content-encoding"] == [b"gzip"] and b"content-length" not in h
    assert sent[-1] == trailer
    assert zlib.decompress(b"".join(m.get("body", b"") for m in sent[1:-1]), 31) == BODY


@pytest.mark.parametrize("configured", ["Application/ZIP; charset=utf-8", " application/zip ",
                                        "application/*", "APPLICATION/"])
@pytest.mark.anyio
async def test_excluded_types_are_normalised(configured: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await app_of(200, [(b"content-type", b"Application/Zip; foo=bar")], body(BODY))(
            scope, receive, send)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    mw = CompressionMiddleware(app, excluded_types=[configured])
    await mw({"type": "http", "method": "GET", "path": "/", "query_string": b"",
              "headers": [(b"accept-encoding", b"gzip")]}, receive, send)
    assert b"content-encoding" not in start_headers(sent) and sent[-1]["body"] == BODY


@pytest.mark.anyio
async def test_an_exact_excluded_type_does_not_exclude_longer_names() -> None:
    sent = await run(app_of(200, [(b"content-type", b"application/zipper")], body(BODY)))
    assert start_headers(sent)[b"content-encoding"] == [b"gzip"]


@pytest.mark.parametrize("shape", ["generator", "tuple"])
@pytest.mark.anyio
async def test_request_headers_in_any_iterable_are_read(shape: str) -> None:
    original = [(b"host", b"x"), (b"accept-encoding", b"gzip"), (b"x-a", b"1")]
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["headers"])
        await app_of(200, [(b"content-type", b"text/plain")], body(BODY))(scope, receive, send)

    headers: Any = (h for h in original) if shape == "generator" else tuple(original)
    sent = await run(app, headers=headers)
    assert seen == [original]  # the app sees every header (a generator is read once)
    assert start_headers(sent)[b"content-encoding"] == [b"gzip"]


@pytest.mark.anyio
async def test_vary_is_merged_into_the_apps_vary_fields() -> None:
    sent = await run(app_of(200, [(b"content-type", b"text/plain"), (b"Vary", b"Origin"),
                                  (b"vary", b"Cookie, accept-encoding")], body(BODY)))
    assert start_headers(sent)[b"vary"] == [b"Origin, Cookie, accept-encoding"]
    sent = await run(app_of(200, [(b"content-type", b"text/plain"),
                                  (b"vary", b"Accept-Language")], body(BODY)))
    assert start_headers(sent)[b"vary"] == [b"Accept-Language, Accept-Encoding"]
    sent = await run(app_of(200, [(b"content-type", b"text/plain"), (b"vary", b"*")],
                            body(BODY)))
    assert start_headers(sent)[b"vary"] == [b"*"]


@pytest.mark.anyio
async def test_content_encoding_identity_is_replaced_not_kept() -> None:
    sent = await run(app_of(200, [(b"content-type", b"text/plain"),
                                  (b"content-encoding", b"identity")], body(BODY)))
    assert start_headers(sent)[b"content-encoding"] == [b"gzip"]


@pytest.mark.anyio
async def test_a_scope_without_method_and_early_hints_pass() -> None:
    """(method is required by ASGI, but a scope without one is not a crash)."""
    hint: Message = {"type": "http.response.early_hint", "links": [b"</s.css>; rel=preload"]}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(hint)
        await app_of(200, [(b"content-type", b"text/plain")], body(BODY))(scope, receive, send)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        raise AssertionError

    await CompressionMiddleware(app)({"type": "http", "headers": [(b"accept-encoding", b"gzip")]},
                                     receive, send)
    assert sent[0] == hint and zlib.decompress(sent[2]["body"], 31) == BODY


@pytest.mark.anyio
@pytest.mark.parametrize("ctype", [b"application/grpc", b"application/grpc+proto"])
async def test_grpc_is_excluded_by_default(ctype: bytes) -> None:
    sent = await run(app_of(200, [(b"content-type", ctype)], body(BODY)))
    assert b"content-encoding" not in start_headers(sent)


@pytest.mark.anyio
@pytest.mark.parametrize("value", [b"identity", b"identity, identity", b"Identity"])
async def test_a_content_encoding_of_only_identity_is_no_coding(value: bytes) -> None:
    sent = await run(app_of(200, [(b"content-type", b"text/plain"),
                                  (b"content-encoding", value)], body(BODY)))
    assert start_headers(sent)[b"content-encoding"] == [b"gzip"]


@pytest.mark.anyio
async def test_a_small_event_stream_is_coded_even_when_its_start_waited() -> None:
    """An event stream is coded whatever its size, also as one message under pathsend."""
    sent = await run(app_of(200, [(b"content-type", b"text/event-stream"),
                                  (b"content-length", b"9")], body(b"data: x\n\n")),
                     extensions={"http.response.pathsend": {}})
    h = start_headers(sent)
    assert h[b"content-encoding"] == [b"gzip"]
    assert h[b"content-length"] == [str(len(sent[1]["body"])).encode()]
    assert zlib.decompress(sent[1]["body"], 31) == b"data: x\n\n"


@pytest.mark.anyio
@pytest.mark.parametrize("ctype", [b"text/plain", b"text/event-stream"])
async def test_a_second_response_start_is_an_error(ctype: bytes) -> None:
    start: Message = {"type": "http.response.start", "status": 200,
                      "headers": [(b"content-type", ctype)]}
    with pytest.raises(RuntimeError, match="twice"):
        await run(app_of(200, [(b"content-type", ctype)], start))


@pytest.mark.anyio
async def test_mixed_case_header_names_are_understood() -> None:
    sent = await run(app_of(200, [(b"Content-Type", b"text/plain"),
                                  (b"Content-Length", b"4000"), (b"X-Keep", b"1")],
                            body(BODY)))
    h = start_headers(sent)
    assert h[b"content-encoding"] == [b"gzip"] and h[b"x-keep"] == [b"1"]
    assert h[b"content-length"] == [str(len(sent[1]["body"])).encode()]  # one, recomputed
    sent = await run(app_of(200, [(b"Content-Type", b"image/PNG")], body(BODY)))
    assert b"content-encoding" not in start_headers(sent)


def test_vary_fields_from_several_layers_become_one() -> None:
    from aduib_asgi.context import _merged

    ours = [(b"vary", b"Accept"), (b"x-a", b"1"), (b"vary", b"Accept-Encoding")]
    assert _merged([(b"content-type", b"a/b")], ours) == [
        (b"content-type", b"a/b"), (b"x-a", b"1"), (b"vary", b"Accept, Accept-Encoding")]
    assert _merged([], [(b"vary", b"Accept"), (b"vary", b"accept")]) == [(b"vary", b"Accept")]
    assert _merged([(b"VARY", b"origin, *")], [(b"vary", b"Accept")]) == [(b"vary", b"*")]
    assert _merged([(b"x", b"1")], [(b"y", b"2")]) == [(b"x", b"1"), (b"y", b"2")]


@pytest.mark.anyio
async def test_an_error_rendered_outside_after_a_refused_coded_start_keeps_the_vary() -> None:
    """The coded start carries the layer's Vary itself (nothing left for the context's
    creator to merge); if sending it fails, the Vary goes back to the context, so an
    error response rendered further out still has it."""
    from aduib_asgi.context import RequestContext, run_with_context

    sent: list[Message] = []

    async def server_send(message: Message) -> None:
        sent.append(message)

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        async def handler(scope: Scope, receive: Receive, send: Send,
                          ctx: RequestContext) -> None:
            async def refusing(message: Message) -> None:
                if message["type"] == "http.response.start" and message["status"] == 200:
                    assert (b"vary", b"Accept-Encoding") in message["headers"]
                    assert ctx.response_headers == []  # moved into the start: no merge
                    raise RuntimeError("refused by a layer further out")
                await send(message)

            try:
                await inner(scope, receive, refusing)
            except RuntimeError:
                await send({"type": "http.response.start", "status": 500, "headers": []})
                await send({"type": "http.response.body", "body": b"failed"})

        await run_with_context(handler, scope, receive, send)

    inner = CompressionMiddleware(app_of(200, [(b"content-type", b"text/plain")], body(BODY)))

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    await outer({"type": "http", "method": "GET", "path": "/", "query_string": b"",
                 "headers": [(b"accept-encoding", b"gzip")]}, receive, server_send)
    assert sent[0]["status"] == 500
    assert start_headers(sent)[b"vary"] == [b"Accept-Encoding"]
