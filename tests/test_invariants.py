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
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from eventmesh_http_sink import (
    BatchConfig,
    ConnectRecord,
    HttpSinkConfig,
    HttpSinkConnector,
    HttpStatusError,
    QueueFullError,
    RetryConfig,
    SendExceptionContext,
    SendResult,
    SinkClosedError,
    SinkError,
)
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


def _is_retryable(error: SinkError, retry: RetryConfig) -> bool:
    """The README's retry rule from public attributes (``retry_on_status``, else ``retryable``)."""
    if isinstance(error, HttpStatusError):
        return error.status in retry.retry_on_status
    return error.retryable


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


def _seeded_replies(table, scenario):
    # The server's answers: drawn from ``table`` with the scenario's weights, in a seeded order.
    rng = random.Random(scenario["seed"])
    choices = scenario["weights"]
    lock = threading.Lock()

    def respond(request):
        with lock:
            return table[rng.choice(choices)]

    return respond


@settings(
    max_examples=int(os.environ.get("EMHS_INVARIANT_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenario)
def test_every_accepted_record_gets_exactly_one_consistent_outcome(fault_server, scenario):
    lock = threading.Lock()
    fault_server.responder = _seeded_replies(FAULTS, scenario)
    fault_server.requests.clear()
    urls = [fault_server.url]
    if scenario["with_dead_url"]:
        urls.append(f"http://127.0.0.1:{free_port()}/")  # refused
    retry = RetryConfig(max_retries=scenario["max_retries"], initial_backoff=0.005, max_backoff=0.02)
    config = HttpSinkConfig(
        urls,
        max_workers=scenario["workers"],
        max_pending=scenario["max_pending"],
        read_timeout=READ_TIMEOUT,
        connect_timeout=1.0,
        retry=retry,
        put_timeout=5,
    )
    threads_before = set(_our_threads())
    fds_before = _open_fds()
    recorder = Recorder()
    accepted: dict[str, Future] = {}
    refused: list[tuple[BaseException, float]] = []
    sink = HttpSinkConnector(config)

    def producer(offset: int) -> None:
        for i in range(scenario["records"]):
            record = ConnectRecord({"n": offset + i}, callback=recorder)
            started = time.monotonic()
            try:
                future = sink.put(record)
            except (SinkClosedError, QueueFullError) as exc:
                refused.append((exc, time.monotonic() - started))
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
                if _is_retryable(context.error, retry):
                    assert context.attempts == retry.max_retries + 1, context
                else:
                    assert 1 <= context.attempts <= retry.max_retries + 1
    # 4. The counters add up.
    stats = sink.stats()
    assert stats.submitted == len(accepted)
    assert stats.pending == 0
    assert stats.submitted == stats.succeeded + stats.failed + stats.pending
    assert stats.succeeded == len(recorder.successes)
    # Refusals come from closing, or from a put that blocked for all of put_timeout: with answers
    # slower than the read timeout, few workers and many pending records, every slot can stay
    # taken by records still retrying for longer than put_timeout (README: then QueueFullError).
    for exc, blocked in refused:
        if isinstance(exc, QueueFullError):
            assert blocked >= config.put_timeout - 0.05, (exc, blocked)
        else:
            assert isinstance(exc, SinkClosedError), exc
    # 5. Nothing left behind: threads and file descriptors.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and (set(_our_threads()) - threads_before or _open_fds() > fds_before):
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


# -- every path at once (issue 12) ------------------------------------------------------------------------

# Hostile answers on top of FAULTS: Retry-After values that are not delta-seconds nor a usable
# HTTP date (one overflows the date parser), framing llhttp refuses, resets mid-stream.
HOSTILE = {
    **FAULTS,
    "retry_after_overflow": Reply(
        503, headers={"Retry-After": "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"}
    ),
    "retry_after_words": Reply(503, headers={"Retry-After": "soon"}),
    "retry_after_superscript": Reply(429, headers={"Retry-After": "\u00b2"}),
    "te_and_cl": Reply(200, body=b"ok", headers={"Transfer-Encoding": "chunked"}),  # both framings
    "content_length_twice": Reply(200, body=b"ok", headers={"Content-Length": "5"}),
    "closed_quietly": Reply(kind="close"),
}
CALLBACK_FAULTS = [None, None, None, ValueError, SystemExit, KeyboardInterrupt]
HEADER_FN_FAULTS = [None, None, None, None, RuntimeError, SystemExit, KeyboardInterrupt]
MAX_ELAPSED = 2.0  # the retry budget: it bounds every wait, so close(None) too

every_path = st.fixed_dictionaries(
    {
        "workers": st.integers(1, 6),
        "max_pending": st.integers(1, 40),
        "records": st.integers(1, 25),
        "threads": st.integers(1, 3),
        "batch": st.one_of(st.none(), st.integers(1, 5)),
        "strategy": st.sampled_from(["round_robin", "broadcast", "failover"]),
        "with_dead_url": st.booleans(),
        "rate_limit": st.one_of(st.none(), st.sampled_from([5.0, 50.0, 500.0])),
        "max_retries": st.integers(0, 3),
        "weights": st.lists(st.sampled_from(sorted(HOSTILE)), min_size=1, max_size=8),
        "callback_faults": st.lists(st.sampled_from(CALLBACK_FAULTS), min_size=1, max_size=4),
        "slow_callback": st.sampled_from([0.0, 0.0, 0.01, 0.05]),
        "header_fn_faults": st.one_of(st.none(), st.lists(st.sampled_from(HEADER_FN_FAULTS), min_size=1)),
        "seed": st.integers(0, 2**32 - 1),
        "close_after": st.one_of(st.none(), st.floats(0.0, 0.4)),
        "close_timeout": st.sampled_from([0.0, 0.1, 0.5, None]),
    }
)


class _Hostile:
    """A callback that records its call first, then may sleep and raise (Exception or BaseException)."""

    def __init__(self, recorder: Recorder, fault: type[BaseException] | None, sleep: float) -> None:
        self.recorder = recorder
        self.fault = fault
        self.sleep = sleep

    def on_success(self, result: SendResult) -> None:
        self.recorder.on_success(result)
        self._misbehave()

    def on_exception(self, context: SendExceptionContext) -> None:
        self.recorder.on_exception(context)
        self._misbehave()

    def _misbehave(self) -> None:
        if self.sleep:
            time.sleep(self.sleep)
        if self.fault is not None:
            raise self.fault("raised by a record callback on purpose")


def _bounded_close(sink: HttpSinkConnector, timeout: float | None, bound: float) -> tuple[bool, object]:
    box: dict[str, object] = {}

    def run() -> None:
        try:
            sink.close(timeout)
        except BaseException as exc:  # close must not raise what a callback raised
            box["raised"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound)
    return not thread.is_alive(), box.get("raised")


@settings(
    max_examples=int(os.environ.get("EMHS_INVARIANT_EXAMPLES", "15")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # No shrinking: each example runs threads against a server for a second or more, and a
    # shrunk example of a race is rarely simpler; the failing draw is printed as it was.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(scenario=every_path)
def test_every_path_keeps_exactly_one_outcome_and_close_keeps_its_bound(fault_server, scenario):
    lock = threading.Lock()
    fault_server.responder = _seeded_replies(HOSTILE, scenario)
    fault_server.requests.clear()
    urls = [fault_server.url + "a", fault_server.url + "b"]
    if scenario["with_dead_url"]:
        urls.append(f"http://127.0.0.1:{free_port()}/")  # refused
    retry = RetryConfig(
        max_retries=scenario["max_retries"], initial_backoff=0.005, max_backoff=0.02, max_elapsed=MAX_ELAPSED
    )
    header_faults = scenario["header_fn_faults"] if scenario["batch"] is None else None
    calls: dict[int, type[BaseException] | None] = {}

    def header_fn(record: ConnectRecord) -> dict[str, str]:
        fault = header_faults[record.data["n"] % len(header_faults)] if header_faults else None
        calls[record.data["n"]] = fault
        if fault is not None:
            raise fault("raised by header_fn on purpose")
        return {"X-N": str(record.data["n"])}

    config = HttpSinkConfig(
        urls,
        max_workers=scenario["workers"],
        max_pending=scenario["max_pending"],
        read_timeout=READ_TIMEOUT,
        connect_timeout=1.0,
        retry=retry,
        put_timeout=5,
        delivery_strategy=scenario["strategy"],
        batch=None if scenario["batch"] is None else BatchConfig(max_records=scenario["batch"], linger=0.02),
        rate_limit=scenario["rate_limit"] if scenario["batch"] is None else None,  # batches have no gate
        header_fn=header_fn if header_faults is not None else None,
    )
    threads_before = set(_our_threads())
    recorder = Recorder()
    callback_faults = scenario["callback_faults"]
    accepted: dict[str, Future] = {}
    raising: set[str] = set()
    refused: list[tuple[BaseException, float, int]] = []
    snapshot_errors: list[str] = []
    sink = HttpSinkConnector(config)

    def producer(offset: int) -> None:
        for i in range(scenario["records"]):
            n = offset + i
            fault = callback_faults[n % len(callback_faults)]
            record = ConnectRecord({"n": n}, callback=_Hostile(recorder, fault, scenario["slow_callback"]))
            started = time.monotonic()
            try:
                future = sink.put(record)
            except BaseException as exc:  # refused: header_fn's own exception, closed, full
                refused.append((exc, time.monotonic() - started, n))
                continue
            with lock:
                accepted[record.record_id] = future
                if fault is not None:
                    raising.add(record.record_id)

    watching = threading.Event()

    def watch() -> None:
        # submitted == succeeded + failed + pending in every snapshot, and the counters never go back.
        last = (0, 0, 0)
        while not watching.is_set():
            s = sink.stats()
            if s.submitted != s.succeeded + s.failed + s.pending or s.pending < 0:
                snapshot_errors.append(
                    f"inconsistent snapshot: {s.submitted=} {s.succeeded=} {s.failed=} {s.pending=}"
                )
            now = (s.submitted, s.succeeded, s.failed)
            if any(a < b for a, b in zip(now, last, strict=True)):
                snapshot_errors.append(f"counters went back: {last} -> {now}")
            last = now
            time.sleep(0.003)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    producers = [threading.Thread(target=producer, args=(k * 1000,)) for k in range(scenario["threads"])]
    for t in producers:
        t.start()
    total = scenario["records"] * scenario["threads"]
    # close's bound: its timeout (or the retry budget, plus one attempt), then the callbacks of the
    # records it cancels, run in parallel on the pool, plus slack for a loaded CI machine.
    callbacks_s = scenario["slow_callback"] * total / scenario["workers"]
    slack = 3.0
    if scenario["close_after"] is not None:
        time.sleep(scenario["close_after"])
        timeout = scenario["close_timeout"]
        budget = (MAX_ELAPSED + READ_TIMEOUT * 2 if timeout is None else timeout) + callbacks_s + slack
        started = time.monotonic()
        returned, raised = _bounded_close(sink, timeout, budget + 5)
        took = time.monotonic() - started
        assert returned, (
            f"close({timeout}) did not return in {budget + 5:.1f} s: {sink.stats().pending} pending"
        )
        assert raised is None, f"close raised {raised!r}"
        assert took <= budget, f"close({timeout}) took {took:.2f} s, bound {budget:.2f} s"
        assert sink.stats().pending == 0, "close returned before every callback had"
    for t in producers:
        t.join(30)
    returned, raised = _bounded_close(sink, 10, 10 + callbacks_s + slack + 5)
    assert returned, f"close(10) did not return: {sink.stats().pending} pending"
    assert raised is None, f"close raised {raised!r}"
    watching.set()
    watcher.join(5)
    assert not snapshot_errors, snapshot_errors[:3]

    # Exactly one callback per accepted record, agreeing with its Future.
    recorder.assert_exactly_once(list(accepted))
    delivered = fault_server.delivered_keys()
    for record_id, future in accepted.items():
        assert future.done()
        if record_id in recorder.successes:
            assert future.result(0) is recorder.successes[record_id]
            if scenario["batch"] is None:
                assert record_id in delivered  # a 2xx for that key really came back
        else:
            context = recorder.failures[record_id]
            assert future.exception(0) is context.error
            assert isinstance(context.error, SinkError)
    # Refused records: header_fn's own exception (or InvalidRecordError wrapping it), a close, a
    # put blocked for all of put_timeout. Never a callback for them.
    for exc, blocked, n in refused:
        if isinstance(exc, QueueFullError):
            assert blocked >= config.put_timeout - 0.05, (exc, blocked)
        elif not isinstance(exc, SinkClosedError):
            assert calls.get(n) is not None, f"record {n} refused with {exc!r}"
    # Nothing leaked: slots, workers, waits, callback errors counted.
    stats = sink.stats()
    assert stats.submitted == len(accepted)
    assert stats.pending == 0, "close returned before every callback had"
    assert stats.waiting == 0 and stats.scheduled_retries == 0, (stats.waiting, stats.scheduled_retries)
    assert stats.submitted == stats.succeeded + stats.failed
    assert stats.succeeded == len(recorder.successes)
    assert stats.callback_errors == len(raising), (stats.callback_errors, len(raising))
    # Requests close aborted may take a moment to unwind their worker: then nothing is left.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and (set(_our_threads()) - threads_before or sink.stats().in_flight):
        time.sleep(0.02)
    assert sink.stats().in_flight == 0, "an attempt is still counted in flight after close"
    assert set(_our_threads()) - threads_before == set(), "a worker or timer thread outlived close"
