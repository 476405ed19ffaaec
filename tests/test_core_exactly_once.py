"""Issue 12, core: one guarded attempt, callback before Future, close's deadline, bounded waits.

Each test is the case a reverted fix fails (see the docstrings): the batch
path without the guard, user code raising ``BaseException``, the Future
resolving before the callback, ``close`` overrunning its deadline, a
rate-limit wait past ``max_elapsed``, refusals that do not name the record.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from eventmesh_http_sink import (
    BatchConfig,
    ConnectRecord,
    HttpSinkConfig,
    HttpSinkConnector,
    QueueFullError,
    RetryConfig,
    SendExceptionContext,
    SendResult,
    SinkClosedError,
    SinkError,
)
from eventmesh_http_sink.testing import FaultServer, Reply

from .conftest import Recorder

NO_RETRY = RetryConfig(max_retries=0)


def _settled(sink: HttpSinkConnector) -> None:
    stats = sink.stats()
    assert stats.pending == 0
    assert stats.in_flight == 0
    assert stats.submitted == stats.succeeded + stats.failed


# -- 1. one guarded way to finish an attempt ------------------------------------------------


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit, ValueError])
@pytest.mark.parametrize("batched", [False, True])
def test_anything_raised_after_the_send_still_gives_every_record_one_outcome(
    server: FaultServer, recorder: Recorder, raised: type[BaseException], batched: bool
) -> None:
    # success_when runs after the response, between "attempt started" and "outcome
    # recorded"; a BaseException there used to leave batched records with no outcome.
    def success_when(status: int, headers: Any, body: bytes) -> bool:
        raise raised("from success_when")

    config = HttpSinkConfig(
        server.url,
        max_workers=1,
        retry=NO_RETRY,
        success_when=success_when,
        batch=BatchConfig(max_records=3, linger=0.01) if batched else None,
    )
    with HttpSinkConnector(config) as sink:
        futures = [sink.put(ConnectRecord(i, callback=recorder)) for i in range(7)]
        assert sink.flush(10)
        _settled(sink)
        recorder.assert_exactly_once([f.record_id for f in futures])  # type: ignore[attr-defined]
        for future in futures:
            error = future.exception(timeout=0)
            assert isinstance(error, SinkError)
        # The worker loop is alive: the next record is sent too.
        server.responder = lambda log: Reply(200)
        assert sink.put(ConnectRecord("after", record_id="after")).exception(timeout=10) is not None


def test_batch_with_a_malformed_retry_after_finishes_every_record(
    server: FaultServer, recorder: Recorder
) -> None:
    server.responder = lambda log: Reply(503, headers={"Retry-After": "²"})
    retry = RetryConfig(max_retries=1, initial_backoff=0.01, max_backoff=0.02)
    config = HttpSinkConfig(server.url, retry=retry, batch=BatchConfig(max_records=2, linger=0.01))
    with HttpSinkConnector(config) as sink:
        records = [ConnectRecord(i, callback=recorder) for i in range(4)]
        sink.put_all(records)
        assert sink.flush(10)
        _settled(sink)
    recorder.assert_exactly_once([r.record_id for r in records])
    assert all(c.error.status == 503 for c in recorder.failures.values())


def test_result_parser_raising_base_exception_fails_the_batch_records(
    server: FaultServer, recorder: Recorder
) -> None:
    def parser(status: int, body: bytes, records: Any) -> list[tuple[bool, str | None]]:
        raise SystemExit(3)

    config = HttpSinkConfig(server.url, batch=BatchConfig(max_records=2, linger=0.01, result_parser=parser))
    with HttpSinkConnector(config) as sink:
        records = [ConnectRecord(i, callback=recorder) for i in range(4)]
        sink.put_all(records)
        assert sink.flush(10)
        _settled(sink)
    recorder.assert_exactly_once([r.record_id for r in records])
    assert all("result_parser" in str(c.error) for c in recorder.failures.values())


# -- user code raising BaseException --------------------------------------------------------


@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt, GeneratorExit])
def test_a_callback_raising_base_exception_stops_no_worker(
    server: FaultServer, raised: type[BaseException]
) -> None:
    seen: list[str] = []

    class Raising:
        def on_success(self, result: SendResult) -> None:
            seen.append(result.record_id)
            raise raised("from a callback")

        def on_exception(self, context: SendExceptionContext) -> None:
            seen.append(context.record_id)
            raise raised("from a callback")

    with HttpSinkConnector(HttpSinkConfig(server.url, max_workers=1, max_pending=2)) as sink:
        futures = [sink.put(ConnectRecord(i, callback=Raising())) for i in range(6)]
        assert sink.flush(10)
        assert all(f.result(timeout=0).status == 200 for f in futures)
        stats = sink.stats()
        assert stats.callback_errors == 6
        assert stats.pending == 0
        assert stats.succeeded == 6
    assert len(seen) == 6


def test_a_bearer_token_callable_raising_base_exception_fails_its_record(
    server: FaultServer, recorder: Recorder
) -> None:
    def token() -> str:
        raise KeyboardInterrupt

    with HttpSinkConnector(
        HttpSinkConfig(server.url, max_workers=1, retry=NO_RETRY, bearer_token=token)
    ) as sink:
        records = [ConnectRecord(i, callback=recorder) for i in range(3)]
        sink.put_all(records)
        assert sink.flush(10)
        _settled(sink)
    recorder.assert_exactly_once([r.record_id for r in records])


# -- 2. the callback runs before the Future resolves ----------------------------------------


def test_future_result_returns_after_the_callback_returned(server: FaultServer) -> None:
    finished: set[str] = set()

    class Slow:
        def on_success(self, result: SendResult) -> None:
            time.sleep(0.002)
            finished.add(result.record_id)

        def on_exception(self, context: SendExceptionContext) -> None:
            time.sleep(0.002)
            finished.add(context.record_id)

    with HttpSinkConnector(HttpSinkConfig(server.url, max_workers=4)) as sink:
        for i in range(60):
            future = sink.put(ConnectRecord(i, callback=Slow()))
            result = future.result(timeout=10)
            assert result.record_id in finished  # no race: the callback has returned


def test_a_callback_waiting_on_its_own_future_gets_an_error_not_a_deadlock(server: FaultServer) -> None:
    errors: list[str] = []
    holder: dict[str, Any] = {}
    ready = threading.Event()

    class Waiter:
        def on_success(self, result: SendResult) -> None:
            ready.wait(5)
            for call in (lambda: holder["future"].result(timeout=30), holder["future"].exception):
                try:
                    call()
                except RuntimeError as exc:
                    errors.append(str(exc))

        def on_exception(self, context: SendExceptionContext) -> None:
            errors.append("unexpected")

    with HttpSinkConnector(HttpSinkConfig(server.url)) as sink:
        started = time.monotonic()
        holder["future"] = sink.put(ConnectRecord(1, record_id="self-waiter", callback=Waiter()))
        ready.set()
        assert holder["future"].result(timeout=10).status == 200
        assert time.monotonic() - started < 10
    assert len(errors) == 2
    assert all("self-waiter" in e and "own Future" in e for e in errors)


def test_flush_inside_a_callback_names_the_record(server: FaultServer) -> None:
    messages: list[str] = []
    holder: list[HttpSinkConnector] = []

    class Flusher:
        def on_success(self, result: SendResult) -> None:
            try:
                holder[0].flush()
            except RuntimeError as exc:
                messages.append(str(exc))

        def on_exception(self, context: SendExceptionContext) -> None:
            messages.append("unexpected")

    with HttpSinkConnector(HttpSinkConfig(server.url)) as sink:
        holder.append(sink)
        sink.put(ConnectRecord(1, record_id="flusher", callback=Flusher())).result(timeout=10)
    assert len(messages) == 1
    assert "flusher" in messages[0] and "wait for itself" in messages[0]


# -- 3. close(timeout) keeps its deadline ---------------------------------------------------


def test_close_keeps_its_deadline_and_spreads_cancelled_callbacks_over_the_pool() -> None:
    # The spec: 200 records, callbacks of 0.2 s, 16 workers, close(1.0).
    # One after another the cancelled callbacks would take ~24 s.
    calls: dict[str, int] = {}
    threads: dict[str, str] = {}
    lock = threading.Lock()

    class Slow:
        def _note(self, record_id: str) -> None:
            with lock:
                calls[record_id] = calls.get(record_id, 0) + 1
                threads[record_id] = threading.current_thread().name
            time.sleep(0.2)

        def on_success(self, result: SendResult) -> None:
            self._note(result.record_id)

        def on_exception(self, context: SendExceptionContext) -> None:
            self._note(context.record_id)

    with FaultServer() as server:
        sink = HttpSinkConnector(HttpSinkConfig(server.url, max_workers=16, max_pending=1000))
        futures = [sink.put(ConnectRecord(i, callback=Slow())) for i in range(200)]
        started = time.monotonic()
        sink.close(1.0)
        took = time.monotonic() - started
        deadline = started + 1.0
        stats = sink.stats()
        late = [r.at - deadline for r in server.requests if r.at > deadline + 0.1]
    assert not late, f"{len(late)} requests reached the server after the deadline"
    assert took < 4.0, took
    assert stats.pending == 0
    assert stats.submitted == stats.succeeded + stats.failed == 200
    assert sorted(calls.values()) == [1] * 200
    assert all(f.done() for f in futures)
    cancelled = [f for f in futures if isinstance(f.exception(timeout=0), SinkClosedError)]
    assert len(cancelled) >= 50  # most were still queued at the deadline
    closing_thread = threading.current_thread().name
    cancelled_threads = {threads[f.record_id] for f in cancelled}  # type: ignore[attr-defined]
    assert closing_thread not in cancelled_threads  # never serially in the closing thread
    assert len(cancelled_threads) > 1


def test_close_aborts_requests_on_the_wire(recorder: Recorder) -> None:
    with FaultServer() as server:
        server.responder = lambda log: Reply(200, delay=5.0)
        sink = HttpSinkConnector(HttpSinkConfig(server.url, max_workers=4, read_timeout=30))
        records = [ConnectRecord(i, callback=recorder) for i in range(4)]
        sink.put_all(records)
        for _ in range(200):
            if sink.stats().in_flight == 4:
                break
            time.sleep(0.01)
        started = time.monotonic()
        sink.close(0.2)
        assert time.monotonic() - started < 3.0  # not the server's 5 s
    recorder.assert_exactly_once([r.record_id for r in records])
    assert all(isinstance(c.error, SinkClosedError) for c in recorder.failures.values())


# -- 4. every wait ends by max_elapsed ------------------------------------------------------


def test_rate_limit_waits_end_by_max_elapsed(server: FaultServer, recorder: Recorder) -> None:
    retry = RetryConfig(max_retries=0, max_elapsed=0.5)
    with HttpSinkConnector(HttpSinkConfig(server.url, rate_limit=1, retry=retry)) as sink:
        records = [ConnectRecord(i, callback=recorder) for i in range(6)]
        sink.put_all(records)
        assert sink.flush(2.0)  # the 6th token is 5 s away: it must not be waited for
        _settled(sink)
    recorder.assert_exactly_once([r.record_id for r in records])
    assert len(recorder.successes) == 1
    assert all("max_elapsed" in str(c.error) for c in recorder.failures.values())


def test_circuit_waits_end_by_max_elapsed(recorder: Recorder) -> None:
    from eventmesh_http_sink import CircuitBreakerConfig

    with FaultServer() as server:
        server.responder = lambda log: Reply(503)
        retry = RetryConfig(max_retries=5, initial_backoff=0.01, max_backoff=0.02, max_elapsed=0.5)
        breaker = CircuitBreakerConfig(failure_threshold=1, reset_timeout=30.0)
        with HttpSinkConnector(HttpSinkConfig(server.url, retry=retry, circuit_breaker=breaker)) as sink:
            records = [ConnectRecord(i, callback=recorder) for i in range(4)]
            sink.put_all(records)
            assert sink.flush(3.0)
            _settled(sink)
    recorder.assert_exactly_once([r.record_id for r in records])


# -- 7. put's refusals name the record ------------------------------------------------------


def test_every_refusal_of_put_names_the_record(server: FaultServer) -> None:
    server.responder = lambda log: Reply(200, delay=1.0)
    config = HttpSinkConfig(server.url, max_workers=1, max_pending=1, when_full="raise")
    sink = HttpSinkConnector(config)
    sink.put(ConnectRecord(0, record_id="first"))
    with pytest.raises(QueueFullError, match="full-one"):
        sink.put(ConnectRecord(1, record_id="full-one"))
    blocking = HttpSinkConnector(HttpSinkConfig(server.url, max_workers=1, max_pending=1, put_timeout=0.1))
    blocking.put(ConnectRecord(0, record_id="b-first"))
    with pytest.raises(QueueFullError, match="timed-one"):
        blocking.put(ConnectRecord(1, record_id="timed-one"))
    sink.close(0.1)
    blocking.close(0.1)
    with pytest.raises(SinkClosedError, match="late-one"):
        sink.put(ConnectRecord(2, record_id="late-one"))
    never_started = HttpSinkConnector(HttpSinkConfig(server.url))
    never_started.close()
    with pytest.raises(SinkClosedError, match="never-one"):
        never_started.put(ConnectRecord(3, record_id="never-one"))


def test_flush_from_a_done_callback_of_the_caller_does_not_wait_for_its_own_record(
    server: FaultServer,
) -> None:
    server.responder = lambda log: Reply(200, delay=0.3)  # the done-callback runs on the worker
    flushed: list[bool] = []
    done = threading.Event()
    with HttpSinkConnector(HttpSinkConfig(server.url)) as sink:
        future = sink.put(ConnectRecord(1))

        def on_done(_: Any) -> None:
            flushed.append(sink.flush(5))
            done.set()

        future.add_done_callback(on_done)
        assert done.wait(10)
    assert flushed == [True]
