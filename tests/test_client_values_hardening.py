"""Client-supplied values cannot forge log lines; secrets are compared in constant
time; JWTs must expire; a handler's own validation failure is the server's fault."""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import jwt
import pytest
from pydantic import BaseModel

from aduib_asgi.auth import (
    BearerAuthenticator,
    Credentials,
    Identity,
    jwt_verifier,
    static_verifier,
)
from aduib_asgi.dispatcher import MethodRegistry, RpcDispatcher
from aduib_asgi.errors import RpcError
from aduib_asgi.logsafe import safe
from aduib_asgi.middleware import ErrorMappingMiddleware
from aduib_asgi.observability.audit import AuditEvent, LoggingAuditSink
from aduib_asgi.observability.logs import RequestContextFilter
from aduib_asgi.stack import Layer, build_stack
from tests.conftest import RPC, client_for, envelope
from tests.demo_process import running_demo

FORGED = "\nWARNING:  [aduib_asgi.audit] auth deny rpc.v2/Forged principal=root code=0"


def test_safe_escapes_every_control_character() -> None:
    assert safe("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert safe("\x1b[31mred\x00") == "\\x1b[31mred\\x00"
    assert safe("line\u2028sep\x85") == "line\\u2028sep\\x85"
    assert safe("plain ünïcode id-1") == "plain ünïcode id-1"
    assert safe(b"raw\nbytes") == "raw\\nbytes"
    assert safe(42) == 42 and safe(None) is None


def _stream_logger(name: str, *filters: logging.Filter) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    for f in filters:
        handler.addFilter(f)
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, out


def test_audit_line_escapes_method_and_principal_even_without_our_filter() -> None:
    logger, out = _stream_logger("tests.audit.escape")
    sink = LoggingAuditSink(logger)
    sink(AuditEvent(outcome="deny", code=3001, request_id="r" + FORGED,
                    method="rpc.v2/T/x" + FORGED, tenant_id=None,
                    principal="p" + FORGED, scheme="bearer"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("auth deny rpc.v2/T/x\\n")


def test_context_filter_escapes_record_args() -> None:
    logger, out = _stream_logger("tests.filter.escape", RequestContextFilter())
    logger.warning("request %s failed: %s", "id" + FORGED, 5000)
    logger.warning("mapping %(a)s", {"a": "x\r\ny"})
    assert out.getvalue().splitlines() == [
        "request id\\nWARNING:  [aduib_asgi.audit] auth deny rpc.v2/Forged principal=root "
        "code=0 failed: 5000",
        "mapping x\\r\\ny",
    ]


def test_a_literal_escape_and_a_control_character_read_back_differently() -> None:
    """``a\\nb`` typed by a client (backslash, n) and ``a`` LF ``b`` must not give the
    same log text: the backslash is escaped too, as the access log does."""
    from aduib_asgi.context import RequestContext, current_context
    from aduib_asgi.logsafe import escape

    assert safe("a\\nb") == "a\\\\nb" != safe("a\nb") == "a\\nb"
    assert safe("C:\\dir") == escape("C:\\dir") == "C:\\\\dir"
    logger, out = _stream_logger("tests.filter.backslash", RequestContextFilter())
    logger.handlers[0].setFormatter(logging.Formatter("%(request_id)s %(method)s %(message)s"))
    for rid in ("a\\nb", "a\nb"):
        ctx = RequestContext(request_id=rid)
        ctx.method = "M\\x1b"
        token = current_context.set(ctx)
        try:
            logger.warning("arg %s", rid)
        finally:
            current_context.reset(token)
    first, second = out.getvalue().splitlines()
    assert first == "a\\\\nb M\\\\x1b arg a\\\\nb"
    assert second == "a\\nb M\\\\x1b arg a\\nb"


def test_a_forged_log_line_cannot_appear_in_the_demo_output() -> None:
    import httpx

    with running_demo() as demo:
        for code in (5000, 5001):  # logged at ERROR and WARNING with the request id
            httpx.post(f"{demo.url}{RPC}", timeout=10, json=envelope(
                "rpc.v2/Echo/fail", {"code": code}, id="x" + FORGED))
        httpx.post(f"{demo.url}{RPC}", timeout=10, headers={"Authorization": "Bearer nope"},
                   json=envelope("rpc.v2/Echo/echo", {}, id="y" + FORGED))
        demo.stop()
    lines = demo.output.splitlines()
    assert any("request x\\nWARNING:" in line for line in lines), demo.output  # logged, escaped
    assert not any(line.startswith("WARNING:  [aduib_asgi.audit] auth deny rpc.v2/Forged")
                   for line in lines), demo.output


class _Spy(str):
    """A presented secret that notes being compared with anything."""

    compared: list[str] = []

    def __eq__(self, other: object) -> bool:
        _Spy.compared.append(str(other))
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_static_secrets_are_never_compared_as_strings() -> None:
    verify = static_verifier({"s3cret-token": Identity("alice")})
    _Spy.compared.clear()
    ident = verify(_Spy("s3cret-token"))
    assert ident is not None and ident.principal == "alice"
    assert verify(_Spy("s3cret-tokem")) is None
    assert verify("") is None
    assert _Spy.compared == []  # looked up by a keyed digest, not by the secret itself
    # and the verifier holds no plaintext secret
    cells = [c.cell_contents for c in verify.__closure__ or ()]
    assert "s3cret-token" not in repr(cells)


@pytest.mark.anyio
async def test_jwt_without_exp_is_refused_unless_configured() -> None:
    key = "k" * 32
    no_exp = jwt.encode({"sub": "carol"}, key, algorithm="HS256")
    with_exp = jwt.encode({"sub": "carol", "exp": int(time.time()) + 60}, key,
                          algorithm="HS256")
    strict = BearerAuthenticator(jwt_verifier(key))
    lax = jwt_verifier(key, require_exp=False)
    with pytest.raises(RpcError) as refused:
        await strict.authenticate(Credentials("bearer", no_exp, "Authorization"), {})
    assert refused.value.code == 3001
    ok = await strict.authenticate(Credentials("bearer", with_exp, "Authorization"), {})
    assert ok.principal == "carol"
    lax_ident = lax(no_exp)
    assert lax_ident is not None and lax_ident.principal == "carol"


class _Reading(BaseModel):
    celsius: float


def _handler_app(debug: bool) -> Any:
    registry = MethodRegistry()

    class In(BaseModel):
        n: int

    @registry.method("rpc.v2/Sensor/read", input_model=In)
    def read(data: In) -> dict[str, Any]:
        # the handler validates a backend's answer itself, and it is wrong
        return _Reading.model_validate({"celsius": "very hot"}).model_dump()

    return build_stack(RpcDispatcher(registry, debug=debug),
                       [Layer.of(ErrorMappingMiddleware, debug=debug)])


@pytest.mark.anyio
async def test_validation_error_inside_a_handler_is_5000_without_details() -> None:
    async with client_for(_handler_app(debug=False)) as c:
        inside = await c.post(RPC, json=envelope("rpc.v2/Sensor/read", {"n": 1}, id="a"))
        params = await c.post(RPC, json=envelope("rpc.v2/Sensor/read", {"n": "x"}, id="b"))
    assert inside.status_code == 500
    err = inside.json()["error"]
    assert err["code"] == 5000 and "details" not in err and "debug" not in err
    assert "celsius" not in inside.text
    # the request's own params still fail as the client's fault: 2001 with fields
    assert params.status_code == 400 and params.json()["error"]["code"] == 2001
    assert params.json()["error"]["details"][0]["field"] == "data.n"


def test_exception_messages_in_tracebacks_are_escaped() -> None:
    logger, out = _stream_logger("tests.traceback.escape", RequestContextFilter())
    try:
        try:
            raise KeyError("inner\r\nforged-inner")
        except KeyError as inner:
            raise ValueError("bad id x" + FORGED) from inner
    except ValueError:
        logger.exception("handler failed")
    text = out.getvalue()
    assert "Traceback (most recent call last):" in text and "raise ValueError" in text
    assert "ValueError: bad id x\\nWARNING:  [aduib_asgi.audit] auth deny" in text
    assert "forged-inner" in text and "inner\\r\\nforged-inner" in text
    assert not any(line.startswith(("WARNING:", "forged")) for line in text.splitlines())


def test_safe_is_idempotent() -> None:
    """A value escaped at the call site passes the log filter unchanged."""
    for raw in ("a\nb", "a\\nb", "x\\\\y\x1b", "plain"):
        once = safe(raw)
        assert safe(once) == once
