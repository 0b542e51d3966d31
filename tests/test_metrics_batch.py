"""RpcMetrics(batch=N): durations recorded through the SDK N at a time and at every
collection give the same histograms and exemplars as recording each at once."""

from __future__ import annotations

import threading
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    MeterProvider,
)
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from aduib_asgi.observability.metrics import RpcMetrics
from tests.config_helpers import call
from tests.demo_process import running_demo

DURATIONS = [0.3, 1.7, 4.0, 12.5, 0.01, 250.0, 7.25, 3.3, 99.9, 0.8]


def _metrics(batch: int, **provider: Any) -> tuple[RpcMetrics, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return RpcMetrics(MeterProvider(metric_readers=[reader], **provider), batch=batch), reader


def _histograms(reader: InMemoryMetricReader) -> dict[tuple[Any, ...], dict[str, Any]]:
    """rpc.server.duration per label set: what an exporter sees, without timestamps."""
    data = reader.get_metrics_data()
    assert data is not None
    out = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name != "rpc.server.duration":
                    continue
                for p in m.data.data_points:
                    out[tuple(sorted(p.attributes.items()))] = {
                        # another order of additions may change the last bits
                        "count": p.count, "sum": round(p.sum, 9), "min": p.min, "max": p.max,
                        "buckets": list(p.bucket_counts),
                        "exemplars": sorted((e.value, e.trace_id, e.span_id)
                                            for e in p.exemplars)}
    return out


def _feed(m: RpcMetrics, durations: list[float], code: int = 0) -> None:
    for d in durations:
        m.record(method="rpc.v2/Echo/echo", code=code, status=200 if code == 0 else 500,
                 duration_ms=d)


def test_a_collection_sees_every_duration_held_back() -> None:
    batched, b_reader = _metrics(64)
    plain, p_reader = _metrics(0)
    for m in (batched, plain):
        _feed(m, DURATIONS)
        _feed(m, DURATIONS[:3], code=5003)
    assert len(batched._pending) == len(DURATIONS) - 1 + 2  # the first of each set: at once
    seen = _histograms(b_reader)
    assert seen == _histograms(p_reader)
    assert sum(h["count"] for h in seen.values()) == len(DURATIONS) + 3
    assert not batched._pending
    _feed(batched, DURATIONS)  # and again after a collection (cumulative)
    _feed(plain, DURATIONS)
    assert _histograms(b_reader) == _histograms(p_reader)


def test_a_full_batch_is_recorded_without_a_collection() -> None:
    m, reader = _metrics(4)
    _feed(m, DURATIONS[:4])  # the first at once, three held back
    assert len(m._pending) == 3
    _feed(m, DURATIONS[4:5])
    assert not m._pending
    (point,) = _histograms(reader).values()
    assert point["count"] == 5


def test_a_sampled_span_makes_the_duration_an_exemplar_at_once() -> None:
    batched, b_reader = _metrics(64)
    plain, p_reader = _metrics(0)
    span = NonRecordingSpan(SpanContext(trace_id=0x0AF7651916CD43DD8448EB211C80319C,
                                        span_id=0xB7AD6B7169203331, is_remote=True,
                                        trace_flags=TraceFlags(TraceFlags.SAMPLED)))
    for m in (batched, plain):
        _feed(m, DURATIONS[:5])
        with trace.use_span(span):
            _feed(m, [42.0])
        _feed(m, DURATIONS[5:])
    assert len(batched._pending) == len(DURATIONS) - 1  # all but the first and the sampled
    seen = _histograms(b_reader)
    assert seen == _histograms(p_reader)
    (point,) = seen.values()
    assert point["exemplars"] == [(42.0, span.get_span_context().trace_id,
                                   span.get_span_context().span_id)]


def test_an_always_on_exemplar_filter_holds_nothing_back() -> None:
    m, reader = _metrics(64, exemplar_filter=AlwaysOnExemplarFilter())
    _feed(m, DURATIONS)
    assert not m._pending
    (point,) = _histograms(reader).values()
    assert point["count"] == len(DURATIONS) and point["exemplars"]


def test_always_off_holds_back_and_takes_no_exemplar() -> None:
    m, reader = _metrics(64, exemplar_filter=AlwaysOffExemplarFilter())
    _feed(m, DURATIONS)
    assert len(m._pending) == len(DURATIONS) - 1
    (point,) = _histograms(reader).values()
    assert point["count"] == len(DURATIONS) and point["exemplars"] == []


def test_collections_from_another_thread_lose_nothing() -> None:
    m, reader = _metrics(8)
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            reader.get_metrics_data()

    thread = threading.Thread(target=collect)
    thread.start()
    try:
        for _ in range(300):
            _feed(m, DURATIONS)
    finally:
        stop.set()
        thread.join(30)
    (point,) = _histograms(reader).values()
    assert point["count"] == 300 * len(DURATIONS)
    assert abs(point["sum"] - sum(DURATIONS) * 300) < 1e-6


def test_the_demo_scrape_counts_every_call() -> None:
    """Fewer calls than a batch: the scrape itself records them."""
    with running_demo("--no-access-log") as demo, \
            httpx.Client(base_url=demo.url, timeout=30) as c:
        for _ in range(5):
            assert call(c, "rpc.v2/Echo/echo", {"v": 1}).status_code == 200
        text = c.get("/aduib_rpc/metrics").text
    counts = [line for line in text.splitlines()
              if line.startswith("rpc_server_duration_milliseconds_count{")
              and 'rpc_method="rpc.v2/Echo/echo"' in line]
    assert len(counts) == 1 and float(counts[0].rsplit(" ", 1)[1]) == 5.0, text[-2000:]
