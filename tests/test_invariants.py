"""The promises, checked under random faults: exactly one outcome, nothing lost, nothing leaked.

Hypothesis draws the connector's shape (workers, max_pending, URLs including a dead one), the server's
per-request behaviour (2xx, 4xx, 5xx, 429 + Retry-After, reset, garbage, truncation, answers slower than the
read timeout, refused connections) and the caller's (several threads putting, close at a random moment).
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import Future

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventmesh_http_sink import (
    ConnectRecord,
    HttpSinkConfig,
    HttpSinkConnector,
    QueueFullError,
    RetryConfig,
    SinkClosedError,
    SinkError,
)
from eventmesh_http_sink.scheduling.retry import RetryPolicy
from eventmesh_http_sink.testing import FaultServer, Reply, free_port

from .conftest import Recorder

READ_TIMEOUT = 0.25
FAULTS = {
    "ok": Reply(200, body=b"ok"),
    "created": Reply(201),
    "bad_request": Reply(400, body=b"no"),
    "not_found": Reply(404),
    "server_error": Reply(500),
    "unavailable": Reply(503),
    "throttled": Reply(429, headers={"Retry-After": "0"}),
    "reset": Reply.reset(),
    "garbage": Reply.garbage(),
    "truncated": Reply.truncate(),
    "too_slow": Reply(200, delay=READ_TIMEOUT + 0.15),
}


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _our_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("eventmesh-http-sink")]


@pytest.fixture(scope="module")
def fault_server():
    with FaultServer(keep_log=True) as srv:
        yield srv


scenario = st.fixed_dictionaries(
    {
        "workers": st.integers(1, 6),
        "max_pending": st.integers(1, 40),
        "records": st.integers(1, 30),
        "threads": st.integers(1, 3),
        "with_dead_url": st.booleans(),
        "max_retries": st.integers(0, 3),
        "weights": st.lists(st.sampled_from(sorted(FAULTS)), min_size=1, max_size=8),
        "seed": st.integers(0, 2**32 - 1),
        "close_after": st.one_of(st.none(), st.floats(0.0, 0.3)),
        "close_timeout": st.sampled_from([0.0, 0.1, None]),
    }
)


@settings(
    max_examples=int(os.environ.get("EMHS_INVARIANT_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenario)
def test_every_accepted_record_gets_exactly_one_consistent_outcome(fault_server, scenario):
    rng = random.Random(scenario["seed"])
    choices = scenario["weights"]
    lock = threading.Lock()

    def respond(request):
        with lock:
            return FAULTS[rng.choice(choices)]

    fault_server.responder = respond
    fault_server.requests.clear()
    urls = [fault_server.url]
    if scenario["with_dead_url"]:
        urls.append(f"http://127.0.0.1:{free_port()}/")  # refused
    retry = RetryConfig(max_retries=scenario["max_retries"], initial_backoff=0.005, max_backoff=0.02)
    config = HttpSinkConfig(
        urls, max_workers=scenario["workers"], max_pending=scenario["max_pending"],
        read_timeout=READ_TIMEOUT, connect_timeout=1.0, retry=retry, put_timeout=5,
    )
    threads_before = set(_our_threads())
    fds_before = _open_fds()
    recorder = Recorder()
    accepted: dict[str, Future] = {}
    refused: list[BaseException] = []
    sink = HttpSinkConnector(config)

    def producer(offset: int) -> None:
        for i in range(scenario["records"]):
            record = ConnectRecord({"n": offset + i}, callback=recorder)
            try:
                future = sink.put(record)
            except (SinkClosedError, QueueFullError) as exc:
                refused.append(exc)
                continue
            with lock:
                accepted[record.record_id] = future

    producers = [threading.Thread(target=producer, args=(k * 1000,)) for k in range(scenario["threads"])]
    for t in producers:
        t.start()
    if scenario["close_after"] is not None:
        time.sleep(scenario["close_after"])
        sink.close(timeout=scenario["close_timeout"])
    for t in producers:
        t.join(30)
    sink.close(timeout=10)

    # 1. Exactly one callback per accepted record, and the Future agrees with it.
    recorder.assert_exactly_once(list(accepted))
    policy = RetryPolicy(retry)
    delivered = fault_server.delivered_keys()
    for record_id, future in accepted.items():
        assert future.done()
        if record_id in recorder.successes:
            result = recorder.successes[record_id]
            assert future.result() is result
            # 2. Success only if the server really answered 2xx for that key.
            assert record_id in delivered
            assert 1 <= result.attempts <= retry.max_retries + 1
        else:
            context = recorder.failures[record_id]
            assert future.exception() is context.error
            assert isinstance(context.error, SinkError)
            # 3. A retryable failure used its whole retry budget, unless close cut it short.
            if not isinstance(context.error, SinkClosedError):
                if policy.is_retryable(context.error):
                    assert context.attempts == retry.max_retries + 1, context
                else:
                    assert 1 <= context.attempts <= retry.max_retries + 1
    # 4. The counters add up.
    stats = sink.stats()
    assert stats.submitted == len(accepted)
    assert stats.pending == 0
    assert stats.submitted == stats.succeeded + stats.failed + stats.pending
    assert stats.succeeded == len(recorder.successes)
    # Refusals only come from closing (put_timeout is generous).
    assert all(isinstance(exc, SinkClosedError) for exc in refused)
    # 5. Nothing left behind: threads and file descriptors.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and (
        set(_our_threads()) - threads_before or _open_fds() > fds_before
    ):
        time.sleep(0.02)
    assert set(_our_threads()) - threads_before == set()
    assert _open_fds() <= fds_before


def test_server_that_goes_away_and_comes_back_loses_nothing(recorder):
    port = free_port()
    first = FaultServer(port=port).start()
    retry = RetryConfig(max_retries=100, initial_backoff=0.05, max_backoff=0.3, max_elapsed=60)
    sink = HttpSinkConnector(HttpSinkConfig(f"http://127.0.0.1:{port}/", max_workers=4, retry=retry))
    records = [ConnectRecord({"i": i}, callback=recorder) for i in range(300)]
    for record in records[:100]:
        sink.put(record)
    assert sink.flush(10)
    first.stop()  # the endpoint goes away, pooled connections are cut
    for record in records[100:200]:
        sink.put(record)
    time.sleep(2.0)
    assert sink.stats().retried > 0
    second = FaultServer(port=port).start()  # back, same port
    try:
        for record in records[200:]:
            sink.put(record)
        assert sink.flush(30)
        sink.close()
    finally:
        second.stop()
    recorder.assert_exactly_once([r.record_id for r in records])
    assert len(recorder.successes) == 300
    keys = first.delivered_keys() | second.delivered_keys()
    assert {r.record_id for r in records} <= keys
