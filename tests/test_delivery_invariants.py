"""Exactly one outcome per record for every strategy, with and without batching, under faults."""

from __future__ import annotations

import collections
import contextvars
import threading

import pytest

from eventmesh_http_sink import (
    BatchConfig,
    ConnectRecord,
    HttpSinkConfig,
    HttpSinkConnector,
    RetryConfig,
    SendExceptionContext,
    SendResult,
)
from eventmesh_http_sink.testing import FaultServer, RandomFaults


class Calls:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count: collections.Counter[str] = collections.Counter()

    def on_success(self, result: SendResult) -> None:
        with self.lock:
            self.count[result.record_id] += 1

    def on_exception(self, context: SendExceptionContext) -> None:
        with self.lock:
            self.count[context.record_id] += 1


@pytest.mark.parametrize("strategy", ["round_robin", "broadcast", "failover"])
@pytest.mark.parametrize("batch", [None, BatchConfig(max_records=7, linger=0.005)])
def test_one_outcome_per_record_under_random_faults(strategy: str, batch: BatchConfig | None) -> None:
    servers = [FaultServer(responder=RandomFaults(fail_rate=0.25, seed=n)).start() for n in range(3)]
    try:
        cfg = HttpSinkConfig(
            [s.url for s in servers],
            delivery_strategy=strategy,  # type: ignore[arg-type]
            batch=batch,
            max_workers=8,
            max_pending=50,
            failover_cooldown=0.01,
            retry=RetryConfig(max_retries=2, initial_backoff=0.001, max_backoff=0.005),
        )
        calls = Calls()
        sink = HttpSinkConnector(cfg)

        def produce(n: int) -> None:
            for i in range(60):
                sink.put(ConnectRecord({"k": f"{n}-{i}"}, callback=calls, record_id=f"{n}-{i}"))

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sink.close(20)
        stats = sink.stats()
        assert calls.count == collections.Counter({f"{n}-{i}": 1 for n in range(4) for i in range(60)})
        assert stats.submitted == 240 == stats.succeeded + stats.failed
        assert stats.pending == 0 and stats.in_flight == 0
        assert stats.succeeded > 0
    finally:
        for server in servers:
            server.stop()


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST_ID", default="unset")


@pytest.mark.parametrize(
    "extra",
    [{"delivery_strategy": "broadcast"}, {"batch": BatchConfig(linger=0.005)}],
    ids=["broadcast", "batch"],
)
def test_callbacks_run_in_the_callers_context(extra: dict[str, object]) -> None:
    seen: dict[str, str] = {}

    class Callback:
        def on_success(self, result: SendResult) -> None:
            seen[result.record_id] = REQUEST_ID.get()

        def on_exception(self, context: SendExceptionContext) -> None:
            seen[context.record_id] = "failed"

    with FaultServer() as a, FaultServer() as b:
        cfg = HttpSinkConfig([a.url, b.url], **extra)  # type: ignore[arg-type]
        with HttpSinkConnector(cfg) as sink:
            for i in range(5):
                REQUEST_ID.set(f"req-{i}")
                sink.put(ConnectRecord({"i": i}, callback=Callback(), record_id=f"r{i}"))
            assert sink.flush(10)
    assert seen == {f"r{i}": f"req-{i}" for i in range(5)}
