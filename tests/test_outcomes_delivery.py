"""The outcome features combined with the delivery options (strategies, batching, encodings)."""

from __future__ import annotations

import json

import pytest

from eventmesh_http_sink import (
    BatchConfig,
    BroadcastError,
    CircuitBreakerConfig,
    ConfigError,
    ConnectRecord,
    HttpSinkConfig,
    HttpSinkConnector,
    ResultStoreConfig,
    RetryConfig,
    replay,
)
from eventmesh_http_sink.testing import FaultServer, Reply

NO_RETRY = RetryConfig(max_retries=0)


def test_broadcast_failure_is_one_dead_letter_per_record(tmp_path):
    path = tmp_path / "dl.jsonl"
    with FaultServer() as ok, FaultServer(responder=lambda request: Reply(500)) as bad:
        cfg = HttpSinkConfig(
            [ok.url, bad.url], delivery_strategy="broadcast", retry=NO_RETRY, dead_letter=str(path)
        )
        with HttpSinkConnector(cfg) as sink:
            record = ConnectRecord({"a": 1})
            assert isinstance(sink.put(record).exception(timeout=5), BroadcastError)
            assert sink.flush(5)
            assert sink.stats().dead_lettered == 1
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [e["record_id"] for e in lines] == [record.record_id]
    assert lines[0]["error_type"] == "BroadcastError"


def test_batched_attempts_fill_the_result_store(server, connector_factory):
    sink = connector_factory(
        server.url,
        batch=BatchConfig(max_records=5, linger=0.05),
        result_store=ResultStoreConfig(),
    )
    records = [ConnectRecord(i) for i in range(5)]
    for future in sink.put_all(records):
        future.result(timeout=5)
    assert len(server.requests) == 1  # one batch request ...
    items = sink.export(1, 10)["pageItems"]  # ... one entry per record
    assert sorted(i["metadata"]["recordId"] for i in items) == sorted(r.record_id for r in records)
    assert {i["metadata"]["code"] for i in items} == {200}


def test_dead_letter_keeps_the_records_data_not_the_wire_encoding(server, connector_factory, tmp_path):
    path = tmp_path / "dl.jsonl"
    server.responder = lambda request: Reply(400)
    sink = connector_factory(
        server.url,
        encoding="cloudevents-structured",
        ce_source="/test",
        ce_type="t",
        compression="gzip",
        compress_min_bytes=1,
        dead_letter=str(path),
    )
    record = ConnectRecord({"order": 42}, extensions={"topic": "orders"})
    sink.put(record).exception(timeout=5)
    sink.close()
    entry = json.loads(path.read_text(encoding="utf-8"))
    assert entry["data"] == {"order": 42} and entry["data_encoding"] == "json"
    server.responder = None
    with HttpSinkConnector(HttpSinkConfig(server.url)) as again:
        assert replay(path, again).succeeded == 1
    assert json.loads(server.requests[-1].body) == {"order": 42}
    assert server.requests[-1].key == record.record_id


@pytest.mark.parametrize(
    ("field", "value"),
    [("rate_limit", 10), ("circuit_breaker", CircuitBreakerConfig())],
)
def test_gates_are_refused_with_batching(field, value):
    with pytest.raises(ConfigError) as info:
        HttpSinkConfig("http://localhost/", batch=BatchConfig(), **{field: value})
    assert info.value.field == field


def test_failover_is_not_rerouted_by_the_breaker(connector_factory):
    # Failover keeps its own URL order; an open circuit holds the record instead of rerouting.
    with FaultServer(responder=lambda request: Reply(503)) as bad, FaultServer() as good:
        sink = connector_factory(
            [bad.url, good.url],
            delivery_strategy="failover",
            failover_threshold=100,
            retry=NO_RETRY,
            circuit_breaker=CircuitBreakerConfig(failure_threshold=1, reset_timeout=30, when_open="fail"),
        )
        sink.put(ConnectRecord("x")).exception(timeout=5)
        error = sink.put(ConnectRecord("y")).exception(timeout=5)
        assert type(error).__name__ == "CircuitOpenError"
        assert len(good.requests) == 0
