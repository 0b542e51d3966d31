"""``GET {base}/v2/openapi.json``: an OpenAPI 3.1 description of what this server serves.

Built from the method registry and the dispatcher's routes, like the
capabilities endpoint: envelope and service schemas from the pydantic models
(:mod:`aduib_asgi.models`), one request and one response schema per registered
method (its input/output models, or the ``doc_input``/``doc_output`` options
that describe a method without validating it; a permissive ``data`` without
either), every code of the error table with the HTTP status it maps to, the
SSE endpoints in both framings, and the headers the layers read and write.

Only routes the dispatcher actually serves are described (TaskService,
HealthService... appear once installed); this module imports no feature
package: it knows their paths and models, nothing else. Routes answered in
front of the dispatcher describe themselves (``RpcDispatcher.document_route``:
the probes of :mod:`aduib_asgi.health.probes`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.types import Receive, Scope, Send

from aduib_asgi.context import RequestContext
from aduib_asgi.dispatcher.registry import MethodRegistry, MethodSpec
from aduib_asgi.errors import ERROR_TABLE
from aduib_asgi.models import (
    HealthCheckRequest,
    HealthCheckResponse,
    RpcErrorModel,
    RpcRequest,
    RpcResponse,
    ServiceCapabilities,
    StreamMessage,
    TaskCancelRequest,
    TaskCancelResponse,
    TaskEvent,
    TaskQueryRequest,
    TaskQueryResponse,
    TaskSubmitRequest,
    TaskSubmitResponse,
    TaskSubscribeRequest,
)
from aduib_asgi.versioning import DEFAULT_VERSIONS, VERSIONS_KEY, ServerVersions

if TYPE_CHECKING:
    from aduib_asgi.dispatcher.app import DocumentedRoute, RpcDispatcher

__all__ = ["OPENAPI_PATH", "build_openapi", "openapi_endpoint"]

OPENAPI_PATH = "/v2/openapi.json"
_REF = "#/components/schemas/{model}"
_JSON = "application/json"
_MSGPACK = "application/msgpack"
_SSE = "text/event-stream"
_ANY_DATA: dict[str, Any] = {
    "anyOf": [{"type": "object", "additionalProperties": True}, {"type": "null"}],
    "description": "The method declares no input model: any object (or null).",
}
_ANY_RESULT: dict[str, Any] = {"description": "The method declares no output model: any value."}

#: Statuses an error can be answered with besides the table's own (PROTOCOL.md §3).
_EXTRA_STATUSES = {
    405: ("HTTP method not allowed on this path (code 2000, with `Allow`).", [2000]),
    406: ("Nothing acceptable in `Accept` (code 1003).", [1003]),
    415: ("Unsupported `Content-Type` (1003) or `Content-Encoding` (1004, with "
          "`Accept-Encoding` listing what is supported).", [1003, 1004]),
    422: ("An idempotency key reused with a different payload (code 4011).", [4011]),
}
_RANGE_FALLBACK = {
    400: "and any other code in 1000-2999",
    401: "and any other code in 3000-3009",
    403: "and any other code in 3010-3999",
    404: "and any other code in 4000-4999",
    500: "and any other code in 5000-5999, or outside every range",
    502: "and any other code in 6000-6999",
}

_STREAM_DESCRIPTION = """\
Server-Sent Events (PROTOCOL.md §5), in one of two framings chosen by the
server's default or per request by `Aduib-Stream-Framing: message|envelope`
(the response names the framing used in the same header):

* **message** (the protocol's): every frame is one event `id: <sequence>`,
  `event: <type>`, `data: <StreamMessage JSON>` (schema `StreamMessage`);
  `sequence` starts at 1 without gaps; the stream always closes with exactly one
  `end` frame (`control.final`, `control.total_count`); a failure is one `error`
  frame then `end`; idle periods carry `heartbeat` frames.
* **envelope** (for aduib-rpc 2.0.1-era clients): every item is only
  `data: <JSON>` — {item}; an error is one error-envelope event and then the
  close; heartbeats are `: ping` comment lines; no `id:`, `event:` or `retry:`.

Anything that fails before the first frame is a plain HTTP error (error
envelope, non-200); in envelope framing that error is sent as
`text/event-stream` with one error-envelope event. Responses carry
`Cache-Control: no-store` and `X-Accel-Buffering: no`."""

_WS_DESCRIPTION = (
    "WebSocket: the client sends the request envelope first, then may send `cancel` and "
    "`ack` (`control.ack_sequence`) StreamMessage frames; the server sends StreamMessage "
    "frames (JSON text, or msgpack binary) with credit-based flow control. Not an HTTP "
    "operation, so described here only.")


def _header(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


_REQUEST_HEADERS: dict[str, dict[str, Any]] = {
    "IdempotencyKey": _header(
        "Idempotency-Key",
        "Replays the stored response of an earlier call with the same key (scoped by tenant, "
        "principal and method; `qos.idempotency_key` in the envelope must agree, else 2003). "
        "The same key with another payload is 4011/422; while the first still runs, 4011/409.",
        {"type": "string", "pattern": r"^[A-Za-z0-9._:~+!-]{1,255}$"}),
    "TenantId": _header(
        "X-Tenant-ID",
        "The tenant (like `metadata.tenant_id`; both must agree, else 2003). An invalid "
        "tenant id is 2003. Without one: tenant `default`.",
        {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,64}$"}),
    "Traceparent": _header(
        "traceparent",
        "W3C trace context; the server span is a child. An invalid value is ignored (new "
        "trace). The envelope's `trace_context` wins over the header."),
    "Tracestate": _header("tracestate", "W3C trace state, propagated with `traceparent`."),
    "Baggage": _header("baggage", "W3C baggage, propagated to the handler's context."),
    "TimeoutMs": _header(
        "X-Timeout-Ms",
        "A server-side deadline in milliseconds (the smaller of this and `qos.timeout_ms` "
        "applies); past it, 5003/504.", {"type": "integer", "minimum": 1}),
    "Priority": _header(
        "X-Priority",
        "Admission priority when there is no envelope: low, normal, high, critical or 0-3.",
        {"type": "string", "enum": ["low", "normal", "high", "critical", "0", "1", "2", "3"]}),
    "RpcVersion": _header(
        "Aduib-Rpc-Version",
        "Header-based version negotiation (apps without an envelope): the version spoken.",
        {"type": "string", "pattern": r"^[0-9]{1,4}\.[0-9]{1,4}$"}),
    "SupportedVersions": _header(
        "Aduib-Rpc-Supported-Versions",
        "Header-based version negotiation: the caller's versions, comma separated "
        "(`2.0, 1.0`); no common version is 1001. The answer carries "
        "`Aduib-Rpc-Negotiated-Version`.",
        {"type": "string", "pattern": r"^[0-9]{1,4}\.[0-9]{1,4}( *, *[0-9]{1,4}\.[0-9]{1,4})*$"}),
    "StreamFraming": _header(
        "Aduib-Stream-Framing", "The SSE framing of this response (PROTOCOL.md §5.1).",
        {"type": "string", "enum": ["message", "envelope"]}),
}


_SERVICE_QUERY: dict[str, Any] = {
    "name": "service", "in": "query", "required": False, "schema": {"type": "string"},
    "description": "One service's health (an unknown one is 4002/404); without it, the "
                   "aggregate of every service.",
}


def _h(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "schema": schema or {"type": "string"}}


_RESPONSE_HEADERS: dict[str, dict[str, Any]] = {
    "RateLimit": _h("IETF RateLimit fields of the policy that applied (remaining quota, "
                    "reset), on every admitted or rejected rate-limited call."),
    "RateLimitPolicy": _h("IETF RateLimit-Policy: the quota policy that applied."),
    "RetryAfter": _h("Seconds to wait before retrying (429 and 503).",
                     {"type": "integer", "minimum": 0}),
    "IdempotentReplayed": _h("`true` when this response is a stored replay.",
                             {"type": "string", "enum": ["true"]}),
    "Deprecation": _h("RFC 9745: the method is deprecated (`@<unix time>`)."),
    "Sunset": _h("RFC 8594: when the deprecated method stops working (HTTP date)."),
    "NegotiatedVersion": _h("Header-based version negotiation: the version negotiated."),
    "Traceparent": _h("The server span's W3C trace context."),
    "StreamFraming": _h("The SSE framing used.", {"type": "string",
                                                  "enum": ["message", "envelope"]}),
    "WwwAuthenticate": _h("The authentication challenge (401)."),
    "AcceptEncoding": _h("Content codings the server accepts (415 for Content-Encoding)."),
    "Allow": _h("HTTP methods the path answers (405)."),
}

_SUCCESS_HEADERS = ("RateLimit", "RateLimitPolicy", "IdempotentReplayed", "Deprecation",
                    "Sunset", "NegotiatedVersion", "Traceparent")
_RPC_PARAMS = ("IdempotencyKey", "TenantId", "Traceparent", "Tracestate", "Baggage",
               "TimeoutMs", "Priority", "SupportedVersions", "RpcVersion")


def _ref(name: str, kind: str = "schemas") -> dict[str, Any]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _component_name(spec: MethodSpec) -> str:
    return f"{spec.service}_{spec.handler}"


def _doc_model(spec: MethodSpec, which: str) -> type[BaseModel] | None:
    model = spec.input_model if which == "input" else spec.output_model
    if model is None:
        doc = spec.options.get(f"doc_{which}")
        if isinstance(doc, type) and issubclass(doc, BaseModel):
            model = doc
    return model


def _current(registry: MethodRegistry) -> list[MethodSpec]:
    """One registration per method name: the open-ended one, else the newest."""
    out: dict[str, MethodSpec] = {}
    for spec in registry:
        prev = out.get(spec.method)
        if prev is None or prev.removed_key is not None:
            out[spec.method] = spec
    return list(out.values())


def _model_schemas(
    models: Iterable[tuple[type[BaseModel], str]],
) -> tuple[dict[Any, dict[str, Any]], dict[str, Any]]:
    pairs: list[Any] = list(dict.fromkeys(models))
    keys, top = models_json_schema(pairs, ref_template=_REF)
    return dict(keys), dict(top.get("$defs", {}))


def _error_components(schemas: dict[str, Any], error_ref: dict[str, Any]) -> None:
    table = [{"code": s.code, "name": s.name, "http_status": s.http_status,
              "grpc_status": s.grpc_status, "retryable": s.retryable}
             for s in ERROR_TABLE.values()]
    lines = "\n".join(f"| {s.code} | {s.name} | {s.http_status} | {s.grpc_status} | "
                      f"{'yes' if s.retryable else 'no'} |" for s in ERROR_TABLE.values())
    schemas["ErrorCode"] = {
        "type": "integer",
        "description": "A code of the error table (PROTOCOL.md §3); an unknown code falls "
                       "back to its range (1xxx/2xxx 400, 3000-3009 401, 3010-3999 403, "
                       "4xxx 404, 5xxx 500, 6xxx 502).\n\n| code | name | HTTP | gRPC | "
                       "retryable |\n|---|---|---|---|---|\n" + lines,
        "x-aduib-error-table": table,
    }
    err = schemas.get("RpcErrorModel")
    if err is not None:
        err["properties"]["code"] = _ref("ErrorCode")
    schemas["V1Error"] = {
        "type": "object", "title": "V1Error",
        "description": "The `error` member of a v1-shaped response (PROTOCOL.md §9).",
        "properties": {"code": {"type": "integer"}, "message": {"type": "string"},
                       "data": {"description": "The error's details."}},
        "required": ["code", "message"],
    }
    schemas["ErrorResponse"] = {
        "type": "object", "title": "ErrorResponse",
        "description": "The response envelope of a failed call: `status` error and `error` "
                       "(v1-shaped for v1 requests). `debug` only in development mode.",
        "properties": {
            "aduib_rpc": {"type": "string"},
            "id": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
            "status": {"type": "string", "enum": ["error"]},
            "error": {"anyOf": [error_ref, _ref("V1Error")]},
            "result": {"type": "null"},
            "negotiated_version": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "trace_context": {"anyOf": [_ref("TraceContext"), {"type": "null"}]},
            "metadata": {"anyOf": [_ref("ResponseMetadata"), {"type": "null"}]},
        },
        "required": ["status", "error"],
    }


def _error_statuses() -> dict[int, tuple[str, list[int]]]:
    out: dict[int, tuple[str, list[int]]] = {}
    for spec in ERROR_TABLE.values():
        text, codes = out.setdefault(spec.http_status, ("", []))
        codes.append(spec.code)
    for status, (text, codes) in _EXTRA_STATUSES.items():
        out[status] = (text, list(codes))
    return dict(sorted(out.items()))


def _error_responses(components: dict[str, Any]) -> list[int]:
    responses = components["responses"]
    statuses = _error_statuses()
    for status, (text, codes) in statuses.items():
        names = ", ".join(f"{c} {ERROR_TABLE[c].name}" for c in codes)
        desc = text or f"Codes {names}"
        if status in _RANGE_FALLBACK:
            desc += f" ({_RANGE_FALLBACK[status]})"
        headers: dict[str, Any] = {}
        if status in (429, 503):
            headers["Retry-After"] = _ref("RetryAfter", "headers")
        if status == 429:
            headers["RateLimit"] = _ref("RateLimit", "headers")
            headers["RateLimit-Policy"] = _ref("RateLimitPolicy", "headers")
        if status == 401:
            headers["WWW-Authenticate"] = _ref("WwwAuthenticate", "headers")
        if status == 405:
            headers["Allow"] = _ref("Allow", "headers")
        if status == 415:
            headers["Accept-Encoding"] = _ref("AcceptEncoding", "headers")
        body = {"schema": _ref("ErrorResponse")}
        base: dict[str, Any] = {"description": desc + ".", "x-aduib-error-codes": codes}
        if headers:
            base["headers"] = headers
        responses[f"Error{status}"] = {**base, "content": {_JSON: body, _MSGPACK: body}}
        responses[f"StreamError{status}"] = {
            **base,
            "description": base["description"] + " In envelope framing, sent as "
                                                  "`text/event-stream` with one error event.",
            "content": {_JSON: body, _MSGPACK: body,
                        _SSE: {"schema": _sse_event(_ref("ErrorResponse"))}},
        }
    return list(statuses)


def _method_schemas(
    specs: list[MethodSpec], schemas: dict[str, Any], model_refs: dict[Any, dict[str, Any]],
    request_props: dict[str, Any], response_props: dict[str, Any],
) -> None:
    for spec in specs:
        name = _component_name(spec)
        inp, out = _doc_model(spec, "input"), _doc_model(spec, "output")
        data = model_refs[(inp, "validation")] if inp is not None else _ANY_DATA
        result = model_refs[(out, "serialization")] if out is not None else _ANY_RESULT
        if inp is not None:
            data = {"anyOf": [data, {"type": "null"}]} if not _required(inp) else data
        props = copy.deepcopy(request_props)
        props["method"] = {"type": "string", "enum": [spec.method],
                           "description": "The method (also accepted in its v1 spellings)."}
        props["data"] = data
        flags = [f for f, on in (("streaming", spec.streaming), ("idempotent", spec.idempotent),
                                 ("deprecated", spec.deprecated)) if on]
        schemas[f"{name}_Request"] = {
            "type": "object", "title": f"{name}_Request",
            "description": f"Request envelope of `{spec.method}`"
                           + (f" ({', '.join(flags)})" if flags else "") + ".",
            "properties": props, "required": ["method"],
        }
        rprops = copy.deepcopy(response_props)
        rprops["status"] = {"type": "string", "enum": ["success", "partial"]}
        rprops["result"] = result
        schemas[f"{name}_Response"] = {
            "type": "object", "title": f"{name}_Response",
            "description": f"Success envelope of `{spec.method}`"
                           + (" (each streamed item in envelope framing)"
                              if spec.streaming else "") + ".",
            "properties": rprops, "required": ["status"],
        }


def _required(model: type[BaseModel]) -> bool:
    return any(f.is_required() for f in model.model_fields.values())


def _body(schema: dict[str, Any], *, msgpack: bool = True) -> dict[str, Any]:
    content: dict[str, Any] = {_JSON: {"schema": schema}}
    if msgpack:
        content[_MSGPACK] = {"schema": schema}
    return {"required": True, "content": content}


def _one_of(names: list[str], suffix: str) -> dict[str, Any]:
    if not names:
        return {"type": "object"}
    refs = [_ref(f"{n}_{suffix}") for n in names]
    return {"oneOf": refs} if suffix == "Request" else {"anyOf": refs}


class _Builder:
    def __init__(self, registry: MethodRegistry, base_path: str, routes: dict[str, Any],
                 ws_routes: Iterable[str], versions: ServerVersions,
                 documented: dict[str, DocumentedRoute]) -> None:
        self.base = base_path
        self.routes = routes
        self.documented = documented
        self.ws_routes = set(ws_routes)
        self.versions = versions
        self.specs = _current(registry)
        self.paths: dict[str, Any] = {}
        self.statuses: list[int] = []

    def params(self, *names: str) -> list[dict[str, Any]]:
        return [_ref(n, "parameters") for n in names]

    def errors(self, stream: bool = False) -> dict[str, Any]:
        prefix = "StreamError" if stream else "Error"
        return {str(s): _ref(f"{prefix}{s}", "responses") for s in self.statuses}

    def success(self, description: str, schema: dict[str, Any],
                headers: Iterable[str] = _SUCCESS_HEADERS) -> dict[str, Any]:
        return {"description": description,
                "headers": {_header_name(h): _ref(h, "headers") for h in headers},
                "content": {_JSON: {"schema": schema}, _MSGPACK: {"schema": schema}}}

    def sse(self, item: str, item_schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": _STREAM_DESCRIPTION.format(item=item),
                "headers": {"Aduib-Stream-Framing": _ref("StreamFraming", "headers")},
                "content": {_SSE: {"schema": _sse_event(
                    {"anyOf": [_ref("StreamMessage"), item_schema, _ref("ErrorResponse")]})}}}

    def op(self, path: str, http_method: str, operation: dict[str, Any]) -> None:
        full = self.base + path
        route = self.routes.get(full)
        if route is None or http_method.upper() not in route.methods:
            return
        self.paths.setdefault(full, {})[http_method] = operation

    def build(self) -> dict[str, Any]:
        unary = [_component_name(s) for s in self.specs if not s.streaming]
        every = [_component_name(s) for s in self.specs]
        model_pairs: list[tuple[type[BaseModel], str]] = [
            (RpcRequest, "validation"), (RpcResponse, "serialization"),
            (RpcErrorModel, "serialization"), (StreamMessage, "serialization"),
            (ServiceCapabilities, "serialization"),
            (TaskSubmitRequest, "validation"), (TaskSubmitResponse, "serialization"),
            (TaskQueryRequest, "validation"), (TaskQueryResponse, "serialization"),
            (TaskCancelRequest, "validation"), (TaskCancelResponse, "serialization"),
            (TaskSubscribeRequest, "validation"), (TaskEvent, "serialization"),
            (HealthCheckRequest, "validation"), (HealthCheckResponse, "serialization"),
        ]
        for documented in self.documented.values():
            model_pairs += [(m, "serialization") for m in documented.models]
        for spec in self.specs:
            inp, out = _doc_model(spec, "input"), _doc_model(spec, "output")
            if inp is not None:
                model_pairs.append((inp, "validation"))
            if out is not None:
                model_pairs.append((out, "serialization"))
        keys, schemas = _model_schemas(model_pairs)
        request_props = schemas[RpcRequest.__name__]["properties"]
        response_props = schemas[RpcResponse.__name__]["properties"]
        request_props["aduib_rpc"] = {
            "type": "string", "enum": list(self.versions.versions), "default": "2.0",
            "description": "The protocol version of the envelope (another is 1001)."}
        response_props["id"] = {"anyOf": [{"type": "string"}, {"type": "integer"},
                                          {"type": "null"}],
                                "description": "The request id (a v1 request's own id, "
                                               "which may be an integer)."}
        request_props["id"] = {"anyOf": [{"type": "string"}, {"type": "integer"},
                                         {"type": "null"}],
                               "description": "The request id (generated when absent)."}
        components: dict[str, Any] = {
            "schemas": schemas, "responses": {},
            "parameters": _REQUEST_HEADERS, "headers": _RESPONSE_HEADERS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "A bearer token (invalid: 3001/401)."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        }
        _error_components(schemas, keys[(RpcErrorModel, "serialization")])
        self.statuses = _error_responses(components)
        _method_schemas(self.specs, schemas, keys, request_props, response_props)
        ref = keys

        rpc_params = self.params(*_RPC_PARAMS)
        self.op("/v2/rpc", "post", {
            "operationId": "rpc", "tags": ["rpc"],
            "summary": "Call a unary method",
            "description": "The request envelope names the method; `data` is its input. A "
                           "streaming method is 2000 here (call it on `/v2/rpc/stream`).",
            "parameters": rpc_params,
            "requestBody": _body(_one_of(unary, "Request")),
            "responses": {"200": self.success("The success envelope.",
                                              _one_of(every, "Response")), **self.errors()},
        })
        self.op("/v2/rpc/stream", "post", {
            "operationId": "rpcStream", "tags": ["rpc"],
            "summary": "Call a method as a stream (SSE)",
            "parameters": [*rpc_params, *self.params("StreamFraming")],
            "requestBody": _body(_one_of(every, "Request")),
            "responses": {"200": self.sse(
                "a full response envelope per item (`status` success, or partial), "
                "schemas `*_Response`", _one_of(every, "Response")),
                **self.errors(stream=True)},
        })
        self.op("/v2/rpc/cancel", "post", {
            "operationId": "rpcCancel", "tags": ["rpc"],
            "summary": "Cancel a running stream or call of the caller's",
            "parameters": self.params("TenantId", "Traceparent"),
            "requestBody": _body({"type": "object", "title": "CancelRequest",
                                  "properties": {"id": {"type": "string", "minLength": 1},
                                                 "reason": {"type": "string"}},
                                  "required": ["id"]}),
            "responses": {"200": self.success(
                "The call was canceled (result `{id, canceled: true}`); an unknown id is "
                "4000/404.", {
                    "type": "object", "title": "CancelResponse",
                    "properties": {**copy.deepcopy(response_props),
                                   "result": {"type": "object", "title": "CancelResult",
                                              "properties": {
                                                  "id": {"type": "string"},
                                                  "canceled": {"type": "boolean"}}}}},
                ("Traceparent",)), **self.errors()},
        })
        self.op("/v1/rpc", "post", {
            "operationId": "rpcV1", "tags": ["rpc"],
            "summary": "The v1 endpoint (PROTOCOL.md §9)",
            "description": "A v1 envelope, upgraded to v2 and answered v1-shaped "
                           "(`meta.stream` answers SSE in envelope framing).",
            "parameters": rpc_params,
            "requestBody": _body({"type": "object", "title": "V1Request",
                                  "properties": {
                                      "aduib_rpc": {"type": "string"},
                                      "id": {"anyOf": [{"type": "string"},
                                                       {"type": "integer"}, {"type": "null"}]},
                                      "method": {"type": "string"},
                                      "data": {"anyOf": [{"type": "object"},
                                                         {"type": "null"}]},
                                      "meta": {"anyOf": [{"type": "object"},
                                                         {"type": "null"}]}},
                                  "required": ["method"]}),
            "responses": {"200": {
                **self.success("The v1 success envelope.", {
                    "type": "object", "title": "V1Response",
                    "properties": {"aduib_rpc": {"type": "string"},
                                   "id": {"anyOf": [{"type": "string"}, {"type": "integer"},
                                                    {"type": "null"}]},
                                   "status": {"type": "string", "enum": ["success"]},
                                   "result": {}}}),
            }, **self.errors(stream=True)},
        })
        self.op("/v2/capabilities", "get", {
            "operationId": "capabilities", "tags": ["meta"],
            "summary": "What this server supports",
            "responses": {"200": self.success("ServiceCapabilities.",
                                              ref[(ServiceCapabilities, "serialization")], ()),
                          **self.errors()},
        })
        self.op(OPENAPI_PATH, "get", {
            "operationId": "openapi", "tags": ["meta"], "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1.",
                                  "content": {_JSON: {"schema": {"type": "object"}}}},
                          **self.errors()},
        })
        for name, req, resp, summary in (
            ("Submit", TaskSubmitRequest, TaskSubmitResponse, "Submit a task"),
            ("Query", TaskQueryRequest, TaskQueryResponse, "Query a task"),
            ("Cancel", TaskCancelRequest, TaskCancelResponse, "Cancel a task"),
        ):
            self.op(f"/v2/TaskService/{name}", "post", {
                "operationId": f"task{name}", "tags": ["TaskService"], "summary": summary,
                "description": "The bare model (no envelope); errors are error envelopes.",
                "parameters": self.params("IdempotencyKey", "TenantId", "Traceparent"),
                "requestBody": _body(ref[(req, "validation")]),
                "responses": {"200": self.success(f"{resp.__name__}.",
                                                  ref[(resp, "serialization")], ()),
                              **self.errors()},
            })
        self.op("/v2/TaskService/Subscribe", "post", {
            "operationId": "taskSubscribe", "tags": ["TaskService"],
            "summary": "Stream a task's events (SSE)",
            "parameters": self.params("TenantId", "Traceparent", "StreamFraming"),
            "requestBody": _body(ref[(TaskSubscribeRequest, "validation")]),
            "responses": {"200": self.sse("a `TaskEvent` (message framing: the `data` of each "
                                          "data frame is a `TaskEvent`)",
                                          ref[(TaskEvent, "serialization")]),
                          **self.errors(stream=True)},
        })
        health = ref[(HealthCheckResponse, "serialization")]
        for verb in ("post", "get"):
            suffix = "" if verb == "post" else "Get"
            check: dict[str, Any] = {
                "operationId": f"healthCheck{suffix}", "tags": ["HealthService"],
                "summary": "Aggregated health (200 with the status in the body)",
                "responses": {"200": self.success("HealthCheckResponse.", health, ()),
                              **self.errors()},
            }
            watch: dict[str, Any] = {
                "operationId": f"healthWatch{suffix}", "tags": ["HealthService"],
                "summary": "Stream health changes (SSE)",
                "parameters": self.params("StreamFraming"),
                "responses": {"200": self.sse("a `HealthCheckResponse`", health),
                              **self.errors(stream=True)},
            }
            if verb == "post":
                check["requestBody"] = _body(ref[(HealthCheckRequest, "validation")])
                watch["requestBody"] = _body(ref[(HealthCheckRequest, "validation")])
            else:  # the HealthCheckRequest as a query string
                check["parameters"] = [_SERVICE_QUERY]
                watch["parameters"] = [*watch["parameters"], _SERVICE_QUERY]
            self.op("/v2/HealthService/Check", verb, check)
            self.op("/v2/HealthService/Watch", verb, watch)
        self.op("/metrics", "get", {
            "operationId": "metrics", "tags": ["meta"], "security": [],
            "summary": "Prometheus exposition of the RPC metrics",
            "responses": {"200": {"description": "Prometheus text format.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        })
        self._documented_routes(keys)
        self._other_routes()
        ws = self.base + "/v2/rpc/ws"
        doc: dict[str, Any] = {
            "openapi": "3.1.0",
            "info": {
                "title": "Aduib RPC v2",
                "version": "2.0",
                "description": "The Aduib RPC Protocol v2 over HTTP as this server serves it. "
                               "Protocol versions: " + ", ".join(self.versions.versions) + ".",
            },
            "security": [{}, {"bearer": []}, {"apiKey": []}],
            "tags": [{"name": t} for t in ("rpc", "TaskService", "HealthService", "probes",
                                           "meta")],
            "paths": self.paths,
            "components": components,
        }
        if ws in self.ws_routes:
            doc["x-aduib-websocket"] = {"path": ws, "description": _WS_DESCRIPTION}
        return doc

    def _documented_routes(self, keys: dict[Any, dict[str, Any]]) -> None:
        """Routes answered in front of the dispatcher, described where they are defined
        (``RpcDispatcher.document_route``: the probes...)."""

        def ref(model: type[BaseModel]) -> dict[str, Any]:
            return copy.deepcopy(keys[(model, "serialization")])

        for full, route in self.documented.items():
            allowed = {m.upper() for m in route.methods}
            for verb, operation in route.describe(ref).items():
                if verb.upper() in allowed:
                    self.paths.setdefault(full, {})[verb.lower()] = operation

    def _other_routes(self) -> None:
        """Routes added by others that this module has no description of: generic."""
        for full, route in self.routes.items():
            if full in self.paths or not full.startswith(self.base):
                continue
            item: dict[str, Any] = {}
            for verb in route.methods:
                if verb in ("HEAD", "OPTIONS"):
                    continue
                item[verb.lower()] = {
                    "operationId": "route_" + "".join(
                        c if c.isalnum() else "_" for c in full[len(self.base):]).strip("_")
                        + "_" + verb.lower(),
                    "summary": f"{verb} {full}",
                    "responses": {"200": {"description": "Success.",
                                          "content": {"*/*": {"schema": {}}}},
                                  **self.errors()},
                }
            if item:
                self.paths[full] = item


def _sse_event(data: dict[str, Any]) -> dict[str, Any]:
    """One Server-Sent Event (OpenAPI 3.1: the schema of an event stream describes each event)."""
    return {
        "type": "object", "title": "ServerSentEvent", "required": ["data"],
        "properties": {
            "data": {"type": "string", "contentMediaType": _JSON, "contentSchema": data},
            "event": {"type": "string", "enum": [
                "message", "data", "partial", "heartbeat", "error", "end", "cancel", "ack"],
                      "description": "The frame type (`message`, SSE's default, in envelope "
                                     "framing)."},
            "id": {"type": "string", "pattern": "^[0-9]+$",
                   "description": "The frame's sequence (message framing only)."},
            "retry": {"type": "integer", "minimum": 0},
        },
    }


def _header_name(component: str) -> str:
    return {"RateLimit": "RateLimit", "RateLimitPolicy": "RateLimit-Policy",
            "IdempotentReplayed": "Idempotent-Replayed", "Deprecation": "Deprecation",
            "Sunset": "Sunset", "NegotiatedVersion": "Aduib-Rpc-Negotiated-Version",
            "Traceparent": "traceparent"}[component]


def build_openapi(
    registry: MethodRegistry,
    *,
    base_path: str = "/aduib_rpc",
    routes: dict[str, Any] | None = None,
    ws_routes: Iterable[str] = (),
    versions: ServerVersions | None = None,
    documented: dict[str, DocumentedRoute] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``registry`` served under ``base_path``.

    ``routes`` maps full paths to objects with a ``methods`` tuple (the
    dispatcher's routes); only those are described. ``documented``: routes
    answered in front of the dispatcher, with their own descriptions
    (``RpcDispatcher.documented_routes``).
    """
    return _Builder(registry, base_path.rstrip("/"), routes or {}, ws_routes,
                    versions or ServerVersions(DEFAULT_VERSIONS), documented or {}).build()


def openapi_endpoint(dispatcher: RpcDispatcher) -> Any:
    """The endpoint serving :func:`build_openapi` for ``dispatcher`` (cached per shape)."""
    from aduib_asgi.codecs import JSON

    cache: dict[Any, bytes] = {}

    async def openapi(scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        versions = ctx.extras.get(VERSIONS_KEY)
        versions = versions if isinstance(versions, ServerVersions) else None
        key = (len(dispatcher.registry), tuple(dispatcher._routes),
               tuple(dispatcher._ws_routes), tuple(dispatcher.documented_routes),
               versions.versions if versions else None)
        body = cache.get(key)
        if body is None:
            doc = build_openapi(dispatcher.registry, base_path=dispatcher.base_path,
                                routes=dispatcher._routes, ws_routes=dispatcher._ws_routes,
                                versions=versions, documented=dispatcher.documented_routes)
            body = JSON.encode(doc)
            cache.clear()
            cache[key] = body
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode("latin-1"))]})
        await send({"type": "http.response.body", "body": body})

    return openapi
