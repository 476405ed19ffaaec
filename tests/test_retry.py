"""Retries: which errors, how many, how long, and that waiting never holds a worker."""

from __future__ import annotations

import email.utils
import time

import pytest

from eventmesh_http_sink import (
    ConnectRecord,
    HttpStatusError,
    ResponseError,
    RetryConfig,
)
from eventmesh_http_sink.errors import EndpointUnavailableError, ReadTimeoutError
from eventmesh_http_sink.scheduling.retry import RetryPolicy, RetryScheduler, parse_retry_after
from eventmesh_http_sink.testing import Reply, free_port

FAST = RetryConfig(max_retries=3, initial_backoff=0.01, max_backoff=0.05)


def test_retryable_failures_are_retried_with_the_same_key(server, connector_factory, recorder):
    record = ConnectRecord("x", callback=recorder)
    # garbage, not reset: a reset on a reused connection is resent at once, not retried
    server.plan(record.record_id, Reply(503), Reply.garbage(), Reply(429), Reply(200))
    sink = connector_factory(server.url, retry=FAST)
    result = sink.put(record).result(timeout=10)
    assert sink.flush(5)
    assert result.attempts == 4
    assert server.keys() == [record.record_id] * 4
    assert sink.stats().retried == 3
    recorder.assert_exactly_once([record.record_id])


def test_exhausted_retries_report_the_last_error(server, connector_factory, recorder):
    record = ConnectRecord("x", callback=recorder)
    server.plan(record.record_id, *[Reply(503)] * 3, Reply(502, body=b"last"))
    sink = connector_factory(server.url, retry=FAST)
    future = sink.put(record)
    error = future.exception(timeout=10)
    sink.flush(5)
    assert isinstance(error, HttpStatusError)
    assert error.status == 502
    assert error.body == b"last"
    assert recorder.failures[record.record_id].attempts == FAST.max_retries + 1
    assert len(server.requests) == 4


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_fail_at_once(server, connector_factory, status):
    record = ConnectRecord("x")
    server.plan(record.record_id, Reply(status), Reply(200))
    sink = connector_factory(server.url, retry=FAST)
    assert isinstance(sink.put(record).exception(timeout=5), HttpStatusError)
    assert len(server.requests) == 1


def test_connection_errors_are_retried(connector_factory):
    # Nothing listens: every attempt is refused, and each is retried.
    sink = connector_factory(f"http://127.0.0.1:{free_port()}/", retry=FAST)
    record = ConnectRecord("x")
    future = sink.put(record)
    assert isinstance(future.exception(timeout=10), EndpointUnavailableError)
    sink.flush(5)
    assert sink.stats().retried == 3


def test_retry_after_seconds_is_respected(server, connector_factory):
    record = ConnectRecord("x")
    server.plan(record.record_id, Reply(503, headers={"Retry-After": "1"}), Reply(200))
    sink = connector_factory(server.url, retry=RetryConfig(initial_backoff=0.01, max_backoff=0.01))
    assert sink.put(record).result(timeout=10).attempts == 2
    first, second = server.requests
    assert second.at - first.at >= 0.95


def test_retry_after_is_ignored_when_told(server, connector_factory):
    record = ConnectRecord("x")
    server.plan(record.record_id, Reply(503, headers={"Retry-After": "30"}), Reply(200))
    config = RetryConfig(initial_backoff=0.01, max_backoff=0.01, respect_retry_after=False)
    sink = connector_factory(server.url, retry=config)
    assert sink.put(record).result(timeout=5).attempts == 2


def test_max_elapsed_stops_retrying(server, connector_factory):
    record = ConnectRecord("x")
    server.plan(record.record_id, Reply(503, headers={"Retry-After": "60"}), Reply(200))
    sink = connector_factory(server.url, retry=RetryConfig(max_elapsed=5))
    started = time.monotonic()
    error = sink.put(record).exception(timeout=5)
    assert isinstance(error, HttpStatusError)
    assert error.status == 503
    assert time.monotonic() - started < 2  # gave up at once: the wait would pass the budget


def test_backoff_waits_do_not_park_workers(server, connector_factory, recorder):
    """20 records told to come back in 2 s must not delay 200 others on 2 workers."""
    slow = [ConnectRecord(f"slow-{i}", callback=recorder) for i in range(20)]
    for record in slow:
        server.plan(record.record_id, Reply(503, headers={"Retry-After": "2"}), Reply(200))
    fast = [ConnectRecord(f"fast-{i}", callback=recorder) for i in range(200)]
    sink = connector_factory(server.url, max_workers=2)
    started = time.monotonic()
    slow_futures = sink.put_all(slow)
    fast_futures = sink.put_all(fast)
    for future in fast_futures:
        assert future.result(timeout=10).attempts == 1
    fast_done = time.monotonic() - started
    assert sink.stats().scheduled_retries > 0  # the slow ones were still waiting
    for future in slow_futures:
        assert future.result(timeout=10).attempts == 2
    assert fast_done < 2.0, f"fast records waited behind backoffs ({fast_done:.2f}s)"
    assert sink.flush(5)
    recorder.assert_exactly_once([r.record_id for r in slow + fast])


class TestRetryPolicy:
    def test_waits_are_jittered_expo_capped(self):
        policy = RetryPolicy(RetryConfig(max_retries=10, initial_backoff=1, max_backoff=4, max_elapsed=1000))
        waits = policy.new_waits()
        error = ResponseError("x")
        seen = [policy.next_wait(error, attempt, 0, waits) for attempt in range(1, 8)]
        caps = [1, 2, 4, 4, 4, 4, 4]
        assert all(w is not None and 0 <= w <= cap for w, cap in zip(seen, caps, strict=True))

    def test_retry_budget(self):
        policy = RetryPolicy(RetryConfig(max_retries=2, initial_backoff=0.1, max_backoff=0.1))
        waits = policy.new_waits()
        error = ReadTimeoutError("t")
        assert policy.next_wait(error, 1, 0, waits) is not None
        assert policy.next_wait(error, 2, 0, waits) is not None
        assert policy.next_wait(error, 3, 0, waits) is None

    def test_status_classification(self):
        policy = RetryPolicy(RetryConfig(retry_on_status=(503,)))
        assert policy.is_retryable(HttpStatusError(503))
        assert not policy.is_retryable(HttpStatusError(500))
        assert policy.is_retryable(ResponseError("reset"))

    def test_retry_after_overrides_and_is_bounded_by_elapsed(self):
        policy = RetryPolicy(RetryConfig(max_elapsed=10))
        waits = policy.new_waits()
        assert policy.next_wait(HttpStatusError(429, retry_after=7.0), 1, 0, waits) == 7.0
        assert policy.next_wait(HttpStatusError(429, retry_after=7.0), 1, 4, waits) is None


def test_parse_retry_after():
    now = time.time()
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= (parse_retry_after(date, now=now) or 0) <= 31
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0


def test_parse_retry_after_survives_dates_and_numbers_out_of_range():
    # email.utils raises OverflowError for a huge year: that is "not a date", not a crash.
    assert parse_retry_after("Mon, 01 Jan 99999999999999999999 00:00:00 GMT") is None
    assert parse_retry_after("9" * 400) == float("inf")  # RetryPolicy gives up: past max_elapsed


def test_scheduler_orders_by_due_time_and_stops():
    seen: list[str] = []
    scheduler: RetryScheduler[str] = RetryScheduler(seen.append)
    scheduler.schedule(0.2, "late")
    scheduler.schedule(0.05, "early")
    scheduler.schedule(30, "never")
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == ["early", "late"]
    assert scheduler.stop() == ["never"]
    assert not scheduler.schedule(0, "after-stop")
