"""All outcome features at once under random faults: the core invariants still hold."""

from __future__ import annotations

import json
import threading

from eventmesh_http_sink import (
    CircuitBreakerConfig,
    ConnectRecord,
    ResultStoreConfig,
    RetryConfig,
)
from eventmesh_http_sink.testing import FaultServer, RandomFaults, Reply


def test_everything_on_under_faults_keeps_exactly_once(recorder, connector_factory, tmp_path):
    path = tmp_path / "dl.jsonl"
    faults = RandomFaults(
        fail_rate=0.4, seed=7, faults=(Reply(503), Reply(400), Reply.reset(), Reply.garbage())
    )
    with FaultServer(responder=faults) as server:
        server.script(*[Reply(503)] * 6)  # the circuit surely opens once
        sink = connector_factory(
            server.url,
            retry=RetryConfig(max_retries=2, initial_backoff=0.005, max_backoff=0.02),
            rate_limit=100,
            circuit_breaker=CircuitBreakerConfig(failure_threshold=3, reset_timeout=0.05),
            result_store=ResultStoreConfig(max_size=100_000, serve_port=0),
            dead_letter=str(path),
            max_pending=50,
        )
        records = [ConnectRecord(i, callback=recorder) for i in range(150)]
        for record in records:
            sink.put(record)
        assert sink.flush(30)
        recorder.assert_exactly_once([r.record_id for r in records])
        stats = sink.stats()
        assert stats.submitted == stats.succeeded + stats.failed == 150
        assert stats.pending == stats.waiting == stats.in_flight == 0
        # One store entry per request the server saw (connection faults included), but for
        # requests resent at once after a reset on a reused connection (no attempt of their own).
        assert len(sink.export(1, 100_000)["pageItems"]) == len(server.requests) - stats.reconnects
        # The mix exercised every feature.
        assert stats.circuit_opened >= 1 and stats.rate_limit_waits >= 1 and stats.retried >= 1
        # Every failure is dead-lettered exactly once, nothing else is.
        with open(path, encoding="utf-8") as file:
            dead = [json.loads(line)["record_id"] for line in file]
        assert sorted(dead) == sorted(recorder.failures)
        assert stats.dead_lettered == stats.failed == len(recorder.failures)
        sink.close()
    names = {t.name for t in threading.enumerate()}
    assert not any(n.startswith(("eventmesh-http-sink-gate", "eventmesh-http-sink-export")) for n in names)
