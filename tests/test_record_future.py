"""The record Future makes no Condition until someone waits; it stays a concurrent.futures.Future.

Issue 14, second phase.

Every caller-visible part of ``concurrent.futures.Future`` is exercised on a
:class:`RecordFuture` resolved from another thread: ``result``/``exception``
with a timeout, ``add_done_callback`` before and after the end,
``concurrent.futures.wait`` (every ``return_when``) and ``as_completed``. The
races between a waiter and the resolving thread are run many times: a lost
wake-up shows as a ``TimeoutError`` (generous bounds, no timing asserted).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest

from eventmesh_http_sink import HttpSinkConfig, HttpSinkConnector
from eventmesh_http_sink.dispatch.unit import RecordFuture
from eventmesh_http_sink.errors import SinkError
from eventmesh_http_sink.records import ConnectRecord
from eventmesh_http_sink.results import SendResult
from eventmesh_http_sink.testing import FaultServer

WAIT = 10.0  # seconds: only a lost wake-up gets near it


def _result(rid: str) -> SendResult:
    return SendResult(rid, "t", "http://x/", 200, 1, 0.0, b"")


def _resolve_later(futures: list[RecordFuture], errors: bool = False) -> threading.Thread:
    go = threading.Event()

    def run() -> None:
        go.wait()
        for i, f in enumerate(futures):
            if errors and i % 2:
                f.set_exception(SinkError(f"no {f.record_id}"))
            else:
                f.set_result(_result(f.record_id))

    t = threading.Thread(target=run)
    t.start()
    go.set()
    return t


def test_it_is_a_concurrent_futures_future_and_builds_no_condition_unless_waited() -> None:
    f = RecordFuture("r1")
    assert isinstance(f, Future)
    assert f.running() and not f.done() and not f.cancel()
    g = RecordFuture("r2")
    g.set_result(_result("r2"))
    assert g.done() and g.result().record_id == "r2" and g.exception() is None
    assert g._cond is None  # resolved and read without ever making a Condition
    with pytest.raises(concurrent.futures.InvalidStateError):
        g.set_result(_result("r2"))
    with pytest.raises(concurrent.futures.TimeoutError):
        f.result(timeout=0.01)
    assert f._cond is not None  # a real wait made one


def test_done_callbacks_run_once_before_and_after_the_end_and_errors_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    f = RecordFuture("r1")
    seen: list[str] = []
    f.add_done_callback(lambda fut: seen.append("before"))
    f.add_done_callback(lambda fut: 1 / 0)
    f.set_exception(SinkError("boom"))
    f.add_done_callback(lambda fut: seen.append(f"after:{type(fut.exception()).__name__}"))
    assert seen == ["before", "after:SinkError"]
    assert "exception calling callback" in caplog.text
    with pytest.raises(SinkError):
        f.result()


@pytest.mark.parametrize("round_", range(3))
def test_result_with_a_timeout_never_misses_the_resolution(round_: int) -> None:
    # The waiter makes its Condition while the resolver may be finishing: no lost wake-up.
    for _ in range(300):
        fs = [RecordFuture(f"r{i}") for i in range(5)]
        t = _resolve_later(fs, errors=True)
        for i, f in enumerate(fs):
            if i % 2:
                assert isinstance(f.exception(timeout=WAIT), SinkError)
            else:
                assert f.result(timeout=WAIT).record_id == f"r{i}"
        t.join()


def test_done_callbacks_added_while_resolving_run_exactly_once() -> None:
    for _ in range(300):
        f = RecordFuture("r")
        calls: list[int] = []
        t = _resolve_later([f])
        for i in range(20):
            f.add_done_callback(lambda fut, i=i, calls=calls: calls.append(i))
        t.join()
        assert sorted(calls) == list(range(20))


@pytest.mark.parametrize(
    "when",
    [
        concurrent.futures.ALL_COMPLETED,
        concurrent.futures.FIRST_COMPLETED,
        concurrent.futures.FIRST_EXCEPTION,
    ],
)
def test_concurrent_futures_wait_sees_every_resolution(when: str) -> None:
    for _ in range(100):
        fs = [RecordFuture(f"r{i}") for i in range(8)]
        t = _resolve_later(fs, errors=when == concurrent.futures.FIRST_EXCEPTION)
        pending = set(fs)
        while pending:
            done, pending = concurrent.futures.wait(pending, timeout=WAIT, return_when=when)
            assert done, "wait() returned on its timeout: a resolution was missed"
        t.join()
        assert all(f.done() for f in fs)


def _wait_into(answer: list[Any], fs: list[RecordFuture]) -> None:
    answer.append(concurrent.futures.wait(fs, timeout=WAIT))


def test_wait_all_completed_never_returns_before_every_future_is_done() -> None:
    # A Future resolved while wait() installs its waiter must be counted once. If the state
    # could change outside the Condition a waiter holds, wait() would see the Future done
    # AND be notified of it: an ALL_COMPLETED waiter counts it twice and returns with
    # another Future still running (seen as 1-2 of 2,000 records "timed out" in the Celery
    # and RQ batch tasks). Forced here: the resolver starts while the Condition is held,
    # and a waiter's wait() and the resolver queue for it.
    for _ in range(40):
        f, g = RecordFuture("f"), RecordFuture("g")
        cond = f._condition
        cond.acquire()
        answer: list[Any] = []
        waiter = threading.Thread(target=_wait_into, args=(answer, [f, g]))
        waiter.start()
        time.sleep(0.01)  # the waiter queues for the Condition
        resolver = threading.Thread(target=f.set_result, args=(_result("f"),))
        resolver.start()
        resolver.join(0.01)  # the resolver queues for it too (after writing the state, if unguarded)
        cond.release()
        resolver.join(WAIT)
        time.sleep(0.01)
        g.set_result(_result("g"))
        waiter.join(WAIT)
        _, not_done = answer[0]
        assert not not_done, "wait(ALL_COMPLETED) returned while a Future was still running"


def test_as_completed_yields_every_future_once() -> None:
    for _ in range(100):
        fs = [RecordFuture(f"r{i}") for i in range(8)]
        t = _resolve_later(fs, errors=True)
        got = list(concurrent.futures.as_completed(fs, timeout=WAIT))
        t.join()
        assert sorted(f.record_id for f in got) == sorted(f.record_id for f in fs)


def test_the_connector_s_futures_work_with_wait_and_as_completed() -> None:
    with FaultServer() as server, HttpSinkConnector(HttpSinkConfig(server.url, max_workers=4)) as sink:
        futures = [sink.put(ConnectRecord({"i": i})) for i in range(200)]
        done, not_done = concurrent.futures.wait(futures, timeout=60)
        assert not not_done and len(done) == 200
        more = [sink.put(ConnectRecord({"i": i})) for i in range(200)]
        statuses = {f.result(timeout=60).status for f in concurrent.futures.as_completed(more, timeout=60)}
        assert statuses == {200}
