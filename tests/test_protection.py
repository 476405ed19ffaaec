"""Protecting the endpoint: a shared rate limit and a per-URL circuit breaker."""

from __future__ import annotations

import time

import pytest

from eventmesh_http_sink import (
    CircuitBreakerConfig,
    CircuitOpenError,
    ConfigError,
    ConnectRecord,
    HttpSinkConfig,
    QueueFullError,
    RetryConfig,
)
from eventmesh_http_sink.scheduling.ratelimit import TokenBucket
from eventmesh_http_sink.testing import FaultServer, Reply

NO_RETRY = RetryConfig(max_retries=0)


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# -- rate limit ---------------------------------------------------------------------------------


def test_rate_limit_measured_over_two_seconds(server, connector_factory, recorder):
    rate, burst, total = 50, 50, 150
    sink = connector_factory(server.url, rate_limit=rate, max_workers=16)
    records = [ConnectRecord(i, callback=recorder) for i in range(total)]
    sink.put_all(records)
    assert sink.flush(10)
    recorder.assert_exactly_once([r.record_id for r in records])
    assert len(recorder.successes) == total  # records wait, none is dropped
    times = sorted(r.at for r in server.requests)
    assert len(times) == total
    elapsed = times[-1] - times[0]
    expected = (total - burst) / rate  # 2.0 s after the initial burst
    assert abs(elapsed - expected) <= 0.1 * expected, elapsed
    # Never more than burst + rate * t requests by time t.
    for i, at in enumerate(times):
        assert i + 1 <= burst + rate * (at - times[0]) + 2, (i, at - times[0])
    # Tokens earned while put_all runs let a few more through without waiting.
    assert total - burst - 10 <= sink.stats().rate_limit_waits <= total - burst


def test_rate_limit_counts_retries_and_holds_no_worker(server, connector_factory, recorder):
    # One worker and a slow rate: records waiting for tokens must not occupy the worker,
    # or the record answered by a retry below could not be sent in between.
    sink = connector_factory(server.url, rate_limit=5, max_workers=1, retry=RetryConfig(initial_backoff=0.01))
    first = ConnectRecord("a", callback=recorder)
    server.plan(first.record_id, Reply(503), Reply(200))
    records = [first, *(ConnectRecord(i, callback=recorder) for i in range(6))]
    sink.put_all(records)
    assert wait_until(lambda: sink.stats().rate_limit_waits >= 2)
    assert sink.stats().in_flight == 0  # the waiters sit on the timer, not on the worker
    assert sink.flush(10)
    recorder.assert_exactly_once([r.record_id for r in records])
    assert len(server.requests) == 8  # the retry took a token like any request
    times = sorted(r.at for r in server.requests)
    assert times[-1] - times[0] >= (8 - 5) / 5 * 0.9


def test_token_bucket_reservations_are_spaced():
    now = [0.0]
    bucket = TokenBucket(10, clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(10)] == [0.0] * 10
    assert bucket.reserve() == pytest.approx(0.1)
    assert bucket.reserve() == pytest.approx(0.2)
    now[0] = 1.0  # the two reservations are paid back, 8 tokens earned
    assert bucket.reserve() == 0.0


@pytest.mark.parametrize(
    "value", [0, -1, "5", True, 0.001, 1e-300, float("inf"), float("nan"), 1_000_001, -float("inf")]
)
def test_rate_limit_is_validated(value):
    # Absurd rates are refused up front, naming the accepted range: 0.001 would park each
    # record ~1,000 s, 1e-300 overflowed the gate's timer (issue 16, item 8).
    with pytest.raises(ConfigError) as info:
        HttpSinkConfig("http://localhost/", rate_limit=value)
    assert info.value.field == "rate_limit"
    assert "from 0.01 to 1000000" in str(info.value)


@pytest.mark.parametrize("value", [0.01, 1, 2.5, 1_000_000])
def test_rate_limit_range_bounds_are_accepted(value):
    assert HttpSinkConfig("http://localhost/", rate_limit=value).rate_limit == value


# -- circuit breaker ----------------------------------------------------------------------------


def test_circuit_opens_holds_and_closes(server, connector_factory, recorder, caplog):
    caplog.set_level("INFO", logger="eventmesh_http_sink")
    server.responder = lambda request: Reply(503)
    breaker = CircuitBreakerConfig(failure_threshold=3, reset_timeout=0.6)
    sink = connector_factory(server.url, retry=NO_RETRY, circuit_breaker=breaker)
    failing = [ConnectRecord(i, callback=recorder) for i in range(3)]
    for record in failing:
        assert sink.put(record).exception(timeout=5) is not None
    assert wait_until(lambda: sink.stats().circuits_open == 1)
    assert sink.stats().circuit_opened == 1
    opened_at = time.monotonic()

    # Open: records wait, nothing reaches the endpoint.
    waiting = [ConnectRecord(f"w{i}", callback=recorder) for i in range(4)]
    futures = sink.put_all(waiting)
    time.sleep(0.3)
    assert len(server.requests) == 3
    assert not any(f.done() for f in futures)
    stats = sink.stats()
    assert stats.pending == 4 and stats.in_flight == 0 and stats.waiting == 4
    assert stats.circuit_waits >= 4

    # The first probe still fails: the circuit opens again for another reset_timeout.
    assert wait_until(lambda: len(server.requests) == 4, timeout=3)
    assert time.monotonic() - opened_at >= 0.55
    assert wait_until(lambda: sink.stats().circuit_opened == 2)
    probe_failed = [f for f in futures if f.done()]
    assert len(probe_failed) == 1 and isinstance(probe_failed[0].exception(), Exception)

    # The endpoint recovers: the next probe closes the circuit and the rest flow.
    server.responder = None
    assert sink.flush(5)
    assert sink.stats().circuits_open == 0
    assert sum(f.exception() is None for f in futures) == 3
    recorder.assert_exactly_once([r.record_id for r in failing + waiting])
    assert len(server.requests) == 7
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "opened" in messages and "half-open" in messages and "closed" in messages


def test_open_circuit_fails_at_once_when_asked(server, connector_factory, recorder, tmp_path):
    server.responder = lambda request: Reply.reset()
    breaker = CircuitBreakerConfig(failure_threshold=2, reset_timeout=30, when_open="fail")
    path = tmp_path / "dl.jsonl"
    sink = connector_factory(server.url, retry=NO_RETRY, circuit_breaker=breaker, dead_letter=str(path))
    for _ in range(2):
        sink.put(ConnectRecord("x")).exception(timeout=5)
    record = ConnectRecord("y", callback=recorder)
    error = sink.put(record).exception(timeout=5)
    assert isinstance(error, CircuitOpenError) and error.url == server.url
    assert len(server.requests) == 2
    assert sink.flush(5)
    assert recorder.failures[record.record_id].attempts == 0
    stats = sink.stats()
    assert stats.circuit_rejected == 1 and stats.circuits_open == 1 and stats.dead_lettered == 3


def test_waiting_records_count_against_max_pending(server, connector_factory):
    server.responder = lambda request: Reply(500)
    breaker = CircuitBreakerConfig(failure_threshold=1, reset_timeout=30)
    sink = connector_factory(
        server.url, retry=NO_RETRY, circuit_breaker=breaker, max_pending=3, when_full="raise"
    )
    sink.put(ConnectRecord("x")).exception(timeout=5)
    assert sink.flush(5)
    held = [sink.put(ConnectRecord(i)) for i in range(3)]
    with pytest.raises(QueueFullError):
        sink.put(ConnectRecord("one too many"))
    sink.close(timeout=0.2)
    assert all(type(f.exception(timeout=5)).__name__ == "SinkClosedError" for f in held)
    assert len(server.requests) == 1


def test_open_circuit_sends_to_the_other_urls(connector_factory, recorder):
    with FaultServer(responder=lambda request: Reply(503)) as bad, FaultServer() as good:
        breaker = CircuitBreakerConfig(failure_threshold=2, reset_timeout=30)
        sink = connector_factory([bad.url, good.url], retry=NO_RETRY, circuit_breaker=breaker, max_workers=1)
        for i in range(4):  # two reach the bad URL and open its circuit
            sink.put(ConnectRecord(i)).exception(timeout=5)
        assert sink.stats().circuits_open == 1
        records = [ConnectRecord(f"r{i}", callback=recorder) for i in range(10)]
        sink.put_all(records)
        assert sink.flush(5)
        assert len(recorder.successes) == 10  # all went round the open circuit
        assert len(bad.requests) == 2


def test_budget_bounds_waiting_on_a_circuit(server, connector_factory):
    server.responder = lambda request: Reply(503)
    breaker = CircuitBreakerConfig(failure_threshold=1, reset_timeout=30)
    sink = connector_factory(
        server.url, retry=RetryConfig(max_retries=0, max_elapsed=0.5), circuit_breaker=breaker
    )
    sink.put(ConnectRecord("x")).exception(timeout=5)
    error = sink.put(ConnectRecord("y")).exception(timeout=5)
    assert isinstance(error, CircuitOpenError) and "budget" in str(error)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"failure_threshold": 0}, "circuit_breaker.failure_threshold"),
        ({"reset_timeout": 0}, "circuit_breaker.reset_timeout"),
        ({"when_open": "drop"}, "circuit_breaker.when_open"),
    ],
)
def test_circuit_breaker_config_is_validated(kwargs, field):
    with pytest.raises(ConfigError) as info:
        CircuitBreakerConfig(**kwargs)
    assert info.value.field == field
    with pytest.raises(ConfigError) as info:
        HttpSinkConfig("http://localhost/", circuit_breaker=5)
    assert info.value.field == "circuit_breaker"
