"""The worker loops and the adaptive concurrency limit (benchmarks issue 7's hot-path changes)."""

from __future__ import annotations

import threading
import time

from eventmesh_http_sink import ConnectRecord
from eventmesh_http_sink.dispatch.concurrency import ConcurrencyLimit
from eventmesh_http_sink.testing import Reply


def test_limit_grows_to_max_workers_while_latency_is_flat() -> None:
    limit = ConcurrencyLimit(16)
    assert limit.limit == 2
    for _ in range(200):
        limit.observe(0.010)
    assert limit.limit == 16


def test_limit_stays_low_when_latency_grows_with_concurrency() -> None:
    # Latency proportional to the limit: threads only queue for the GIL.
    limit = ConcurrencyLimit(16)
    seen = []
    for _ in range(2000):
        limit.observe(0.0002 * limit.limit)
        seen.append(limit.limit)
    assert max(seen[-500:]) < 16
    assert min(seen) >= 1


def test_one_slow_2xx_now_and_then_is_a_gil_wait_not_a_slow_endpoint() -> None:
    # Issue 14: with many threads runnable an attempt sometimes waits 5-50 ms for the GIL;
    # that must not lift the limit to max_workers against a fast endpoint.
    limit = ConcurrencyLimit(16)
    for i in range(2000):
        limit.observe(0.050 if i % 7 == 6 else 0.0002 * limit.limit)  # an endpoint seen fast first
    assert limit.limit < 16


def test_a_window_of_slow_2xx_lifts_the_limit_to_max_at_once() -> None:
    limit = ConcurrencyLimit(16)
    for _ in range(40):  # a fast endpoint first: the limit settles below max
        limit.observe(0.0005)
    assert limit.limit < 16
    raised = [limit.observe(0.030) for _ in range(4 * limit.limit)]  # then one window all slow
    assert any(raised) and limit.limit == 16


def test_the_first_slow_2xx_of_a_fresh_connector_lifts_the_limit_at_once() -> None:
    limit = ConcurrencyLimit(16)
    assert limit.observe(0.030) and limit.limit == 16


def test_limit_never_exceeds_maximum_or_drops_below_one() -> None:
    limit = ConcurrencyLimit(3, initial=50)
    assert limit.limit == 3
    for latency in [0.001, 1.0, 0.001, 5.0] * 100:
        limit.observe(latency)
        assert 1 <= limit.limit <= 3


def test_slow_endpoint_gets_more_than_the_initial_two_connections(
    server, connector_factory, recorder
) -> None:
    server.responder = lambda log: Reply(200, delay=0.05)
    sink = connector_factory(server.url, max_workers=8)
    records = [ConnectRecord(i, callback=recorder) for i in range(48)]
    for record in records:
        sink.put(record)
    assert sink.flush(30)
    recorder.assert_exactly_once([r.record_id for r in records])
    assert len(recorder.successes) == 48
    # The limit started at 2 and grew because latency stayed flat.
    assert server.connections > 2
    assert server.connections <= 8
    dispatcher = sink._process.current().dispatcher
    for _ in range(200):  # the last loop exits just after its record resolved
        if dispatcher.workers == 0:
            break
        time.sleep(0.01)
    assert dispatcher.workers == 0  # every loop exited once the queue was empty


def test_in_flight_counts_records_on_the_wire(server, connector_factory, recorder) -> None:
    release = threading.Event()
    server.responder = lambda log: Reply(200, delay=0.5)
    sink = connector_factory(server.url, max_workers=2)
    futures = [sink.put(ConnectRecord(i, callback=recorder)) for i in range(2)]
    for _ in range(100):
        if sink.stats().in_flight == 2:
            break
        release.wait(0.01)
    assert sink.stats().in_flight == 2
    assert futures[0].running()
    assert sink.flush(10)
    assert sink.stats().in_flight == 0
    assert all(f.result().status == 200 for f in futures)


def test_records_queued_at_close_deadline_are_reported_once(server, connector_factory, recorder) -> None:
    server.responder = lambda log: Reply(200, delay=0.3)
    sink = connector_factory(server.url, max_workers=2)
    records = [ConnectRecord(i, callback=recorder) for i in range(10)]
    sink.put_all(records)
    sink.close(timeout=0.1)
    recorder.assert_exactly_once([r.record_id for r in records])
    assert len(recorder.failures) >= 8
    stats = sink.stats()
    assert stats.submitted == stats.succeeded + stats.failed == 10


def test_fast_failures_do_not_teach_the_limit_a_latency(connector_factory, recorder) -> None:
    import math

    from eventmesh_http_sink import RetryConfig
    from eventmesh_http_sink.testing import free_port

    sink = connector_factory(f"http://127.0.0.1:{free_port()}/", retry=RetryConfig(max_retries=0))
    records = [ConnectRecord(i, callback=recorder) for i in range(30)]
    sink.put_all(records)
    assert sink.flush(10)
    recorder.assert_exactly_once([r.record_id for r in records])
    assert len(recorder.failures) == 30
    assert sink._process.current().dispatcher.limit._min == math.inf  # refused connections were not observed
