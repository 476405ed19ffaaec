"""The Prometheus exporter: several connectors per registry, each once, one TYPE line per family (item 11)."""

from __future__ import annotations

import gc
import re

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from eventmesh_http_sink import ConnectRecord, HttpSinkConfig, HttpSinkConnector, RetryConfig
from eventmesh_http_sink.prometheus import register, unregister
from eventmesh_http_sink.testing import FaultServer, Reply

FAST = RetryConfig(max_retries=1, initial_backoff=0.01, max_backoff=0.02)


def scrape(registry) -> str:
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def type_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("# TYPE eventmesh_http_sink")]


def test_two_connectors_on_the_default_registry_each_with_its_label():
    a = HttpSinkConnector(HttpSinkConfig("http://127.0.0.1:1/a"))
    b = HttpSinkConnector(HttpSinkConfig("http://127.0.0.1:1/b"))
    collector = register(a, sink="orders")  # the README's usage: registry=None
    try:
        assert register(b, sink="audit") is collector  # raised DuplicateTimeseries before
        text = scrape(REGISTRY)
        got = samples(text)
        for sink in ("orders", "audit"):
            assert got[("eventmesh_http_sink_records_submitted_total", frozenset({("sink", sink)}))] == 0
        lines = type_lines(text)
        assert len(lines) == len(set(lines))  # every family once
    finally:
        REGISTRY.unregister(collector)
        a.close()
        b.close()
    assert "eventmesh_http_sink" not in scrape(REGISTRY)


def test_the_same_connector_twice_is_refused_and_type_lines_never_repeat():
    registry = CollectorRegistry()
    sink = HttpSinkConnector(HttpSinkConfig("http://127.0.0.1:1/"))
    register(sink, registry, sink="one")
    with pytest.raises(ValueError, match="already registered"):
        register(sink, registry, sink="two")
    other = HttpSinkConnector(HttpSinkConfig("http://127.0.0.1:1/"))
    with pytest.raises(ValueError, match="sink='one' is already used"):
        register(other, registry, sink="one")
    register(other, registry, sink="two")
    text = scrape(registry)
    lines = type_lines(text)
    assert len(lines) == len(set(lines))
    assert "# TYPE eventmesh_http_sink_records_submitted_total counter" in lines
    assert len(re.findall(r"^eventmesh_http_sink_records_submitted_total", text, re.M)) == 2
    # Another registry is another collector: the same connector may be served there too.
    register(sink, CollectorRegistry(), sink="one")


def test_unregister_and_collected_connectors_drop_their_series():
    registry = CollectorRegistry()
    keep = HttpSinkConnector(HttpSinkConfig("http://127.0.0.1:1/"))
    gone = HttpSinkConnector(HttpSinkConfig("http://127.0.0.1:1/"))
    dropped = HttpSinkConnector(HttpSinkConfig("http://127.0.0.1:1/"))
    for connector, label in ((keep, "keep"), (gone, "gone"), (dropped, "dropped")):
        register(connector, registry, sink=label)
    assert unregister(dropped, registry) and not unregister(dropped, registry)
    del gone
    gc.collect()
    labels = {dict(k[1]).get("sink") for k in samples(scrape(registry))}
    assert labels == {"keep"}
    register(dropped, registry, sink="dropped")  # a freed label can be used again


def test_url_labels_never_carry_the_query_string():
    secret = "q-s3cr3t-value"
    with FaultServer() as server:
        server.plan("p1", Reply(503), Reply(200))
        server.plan("p2", Reply(404))
        urls = [f"{server.url}?api_key={secret}", f"{server.url}?api_key={secret}-2"]
        with HttpSinkConnector(HttpSinkConfig(urls, retry=FAST)) as sink:
            registry = CollectorRegistry()
            register(sink, registry, sink="s")
            for rid in ("p1", "p2", "p3"):
                sink.put(ConnectRecord({"id": rid}, record_id=rid))
            assert sink.flush(10)
            text = scrape(registry)
        label = server.url  # scheme://host:port/path: the two URLs share it, their counts are summed
    assert secret not in text
    got = samples(text)
    key = frozenset({("sink", "s"), ("url", label), ("outcome", "succeeded")})
    assert got[("eventmesh_http_sink_url_records_total", key)] == 2
    key = frozenset({("sink", "s"), ("url", label), ("outcome", "failed")})
    assert got[("eventmesh_http_sink_url_records_total", key)] == 1
    assert got[("eventmesh_http_sink_url_retries_total", frozenset({("sink", "s"), ("url", label)}))] == 1
