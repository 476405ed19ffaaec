"""stats() details (per URL, retries by cause, latency percentiles), Prometheus export, logging."""

from __future__ import annotations

import logging
import math
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from eventmesh_http_sink import (
    ConnectRecord,
    HttpSinkConfig,
    HttpSinkConnector,
    RetryConfig,
    SendExceptionContext,
    SendResult,
)
from eventmesh_http_sink.metrics import LatencyHistogram, Metrics, error_kind
from eventmesh_http_sink.prometheus import register
from eventmesh_http_sink.testing import FaultServer, Reply

FAST = RetryConfig(max_retries=3, initial_backoff=0.001, max_backoff=0.01)


def test_histogram_percentiles_within_a_bucket_and_bounded() -> None:
    h = LatencyHistogram()
    for i in range(1, 1001):  # 1 ms .. 1 s, uniform
        h.observe(i / 1000)
    snap = h.snapshot()
    assert snap.count == 1000 and math.isclose(snap.sum, 500.5)
    for q, exact in ((0.5, 0.5), (0.95, 0.95), (0.99, 0.99)):
        got = snap.percentile(q)
        assert got is not None and exact <= got <= exact * 2**0.25 * 1.001
    size = sys.getsizeof(h._counts)
    for _ in range(100_000):
        h.observe(0.003)
    assert sys.getsizeof(h._counts) == size  # buckets, not samples
    assert LatencyHistogram().snapshot().percentile(0.5) is None
    h.observe(1e9)
    assert h.snapshot().percentile(1.0) == math.inf


def test_cumulative_buckets_end_with_inf_and_count() -> None:
    h = LatencyHistogram()
    for v in (0.0001, 0.0002, 0.05, 10.0):
        h.observe(v)
    cum = h.snapshot().cumulative()
    assert cum[-1] == (math.inf, 4)
    assert [n for _, n in cum] == sorted(n for _, n in cum)
    assert dict(cum)[0.0001] == 1 and dict(cum)[0.0002] == 2


class _Boom:
    def on_success(self, result: SendResult) -> None:
        raise RuntimeError("callback bug")

    def on_exception(self, context: SendExceptionContext) -> None:
        pass


def test_stats_per_url_retries_by_cause_failures_latency() -> None:
    with FaultServer() as a, FaultServer() as b:
        for srv in (a, b):
            srv.plan("x1", Reply(503, headers={"Retry-After": "0"}), Reply(200))
        a.plan("x2", *[Reply(500)] * 10)
        b.plan("x2", *[Reply(500)] * 10)
        # x1 recovers whichever URL it is sent to; x2 fails on both.
        config = HttpSinkConfig([a.url, b.url], retry=FAST)
        with HttpSinkConnector(config) as sink:
            sink.put(ConnectRecord(1, record_id="x1")).exception()
            sink.put(ConnectRecord(2, record_id="x2")).exception()
            for i in range(8):
                sink.put(ConnectRecord(i, callback=_Boom()))
            sink.flush()
            st = sink.stats()
        urls = {a.url, b.url}
    assert (st["submitted"], st["succeeded"], st["failed"]) == (10, 9, 1)
    assert st.callback_errors == 8
    assert st.failures_by_kind == {"http_500": 1}
    assert sum(st.retries_by_cause.values()) == st.retried
    assert st.retries_by_cause["http_503"] >= 1 and st.retries_by_cause["http_500"] >= 1
    assert set(st.per_url) == urls
    assert sum(u.succeeded for u in st.per_url.values()) == 9
    assert sum(u.failed for u in st.per_url.values()) == 1
    assert sum(u["retried"] for u in st.per_url.values()) == st.retried
    assert st.latency.count == 10
    assert st.latency_p50 is not None and st.latency_p50 <= st.latency_p95 <= st.latency_p99  # type: ignore[operator]
    d = st.as_dict()
    for url in urls:
        assert d["per_url"][url]["succeeded"] == st.per_url[url].succeeded
    assert st.breaker == {}


def test_stats_before_start_keeps_old_shape() -> None:
    st = HttpSinkConnector(HttpSinkConfig("http://127.0.0.1:1/")).stats()
    assert st["submitted"] == 0 and st.latency_p99 is None and st.per_url == {}


def test_error_kind_labels() -> None:
    from eventmesh_http_sink import HttpStatusError, ResponseError

    assert error_kind(HttpStatusError(429)) == "http_429"
    assert error_kind(ResponseError("reset")) == "ResponseError"
    m = Metrics()
    m.retry(None, ResponseError("x"))  # never attempted: no URL row, still a cause
    m.outcome("http://u/", 0.01, ResponseError("x"), copy=True)  # a broadcast copy
    per_url, retries, failures, latency = m.snapshot()
    assert per_url == {"http://u/": m.snapshot()[0]["http://u/"]} and per_url["http://u/"].failed == 1
    assert retries == {"ResponseError": 1} and failures == {} and latency.count == 0


def _samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_prometheus_collector_with_real_registry() -> None:
    with FaultServer() as server:
        server.plan("p1", Reply(503, headers={"Retry-After": "0"}), Reply(200))
        server.plan("p2", Reply(404))
        with HttpSinkConnector(HttpSinkConfig(server.url, retry=FAST)) as sink:
            registry = CollectorRegistry()
            collector = register(sink, registry, sink="orders")
            for rid in ("p1", "p2", "p3"):
                sink.put(ConnectRecord({"id": rid}, record_id=rid))
            sink.flush()
            got = _samples(registry)
            url = server.url
    sink_l = ("sink", "orders")
    assert got[("eventmesh_http_sink_records_submitted_total", frozenset({sink_l}))] == 3
    assert got[("eventmesh_http_sink_records_total", frozenset({sink_l, ("outcome", "succeeded")}))] == 2
    assert got[("eventmesh_http_sink_records_total", frozenset({sink_l, ("outcome", "failed")}))] == 1
    assert got[("eventmesh_http_sink_failures_total", frozenset({sink_l, ("kind", "http_404")}))] == 1
    assert got[("eventmesh_http_sink_retries_total", frozenset({sink_l, ("cause", "http_503")}))] == 1
    assert got[("eventmesh_http_sink_url_retries_total", frozenset({sink_l, ("url", url)}))] == 1
    key = (
        "eventmesh_http_sink_url_records_total",
        frozenset({sink_l, ("url", url), ("outcome", "succeeded")}),
    )
    assert got[key] == 2
    assert got[("eventmesh_http_sink_pending", frozenset({sink_l}))] == 0
    assert got[("eventmesh_http_sink_latency_seconds_count", frozenset({sink_l}))] == 3
    assert got[("eventmesh_http_sink_latency_seconds_bucket", frozenset({sink_l, ("le", "+Inf")}))] == 3
    registry.unregister(collector)
    assert "eventmesh_http_sink" not in generate_latest(registry).decode()


def test_logging_warning_per_failure_debug_per_retry_no_secrets(caplog: pytest.LogCaptureFixture) -> None:
    assert logging.getLogger("eventmesh_http_sink").handlers == []  # the library adds none
    with FaultServer() as server:
        server.plan("L1", Reply(503, headers={"Retry-After": "0"}), Reply(500), *[Reply(400)] * 3)
        config = HttpSinkConfig(server.url, retry=FAST, headers={"Authorization": "Bearer tok-SECRET"})
        with caplog.at_level(logging.DEBUG, logger="eventmesh_http_sink"), HttpSinkConnector(config) as sink:
            sink.put(ConnectRecord(1, record_id="L1")).exception()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    retries = [r for r in caplog.records if r.levelno == logging.DEBUG and "retrying" in r.getMessage()]
    assert len(warnings) == 1 and "record L1 failed after 3 attempt(s)" in warnings[0].getMessage()
    assert len(retries) == 2
    assert "tok-SECRET" not in caplog.text


def test_prometheus_exports_optional_feature_fields_when_present() -> None:
    import attrs

    base = HttpSinkConnector(HttpSinkConfig("http://127.0.0.1:1/")).stats()
    snapshot = attrs.evolve(base, dead_lettered=2, circuits_open=1, breaker={"http://a/": "open"})

    class Stub:
        def stats(self) -> object:
            return snapshot

    stub = Stub()
    registry = CollectorRegistry()
    register(stub, registry)  # type: ignore[arg-type]
    got = _samples(registry)
    d = ("sink", "default")
    assert got[("eventmesh_http_sink_dead_lettered_total", frozenset({d}))] == 2
    assert got[("eventmesh_http_sink_circuits_open", frozenset({d}))] == 1
    assert (
        got[("eventmesh_http_sink_circuit_state", frozenset({d, ("url", "http://a/"), ("state", "open")}))]
        == 1
    )
    assert got[("eventmesh_http_sink_rate_limit_waits_total", frozenset({d}))] == 0


def test_every_snapshot_counts_the_same_records_in_the_ledger_and_the_details() -> None:
    # The ledger and the metrics change in one lock round per record, and stats() reads
    # both in one round: per-URL rows, failure kinds and latency samples always add up
    # to succeeded + failed, however the snapshot falls between records.
    with FaultServer() as server:
        url = server.url
        server.responder = lambda request: Reply(400 if request.body.endswith(b"7}") else 200)
        cfg = HttpSinkConfig(url, max_workers=8, retry=RetryConfig(max_retries=0))
        with HttpSinkConnector(cfg) as sink:
            snapshots = []
            futures = []
            for i in range(1500):
                futures.append(sink.put(ConnectRecord({"i": i})))
                if i % 3 == 0:
                    snapshots.append(sink.stats())
            while any(not f.done() for f in futures):
                snapshots.append(sink.stats())
            sink.flush()
            snapshots.append(sink.stats())
    assert snapshots[-1].succeeded == 1350 and snapshots[-1].failed == 150
    mid = [s for s in snapshots if 0 < s.succeeded + s.failed < 1500]
    assert mid, "no snapshot fell while records were finishing"
    for s in snapshots:
        row = s.per_url.get(url)
        assert (row.succeeded if row else 0) == s.succeeded, s
        assert (row.failed if row else 0) == s.failed, s
        assert sum(s.failures_by_kind.values()) == s.failed, s
        assert s.latency.count == s.succeeded + s.failed, s
