"""The outcome side's cheap paths (issue 14): each keeps the contract it replaced.

* :func:`run_callback` marks the thread only while a record's callback runs (a plain
  thread-local set and reset instead of a generator context manager).
* :meth:`RecordFuture.settle` gives the record's slot back once, as the Future becomes
  done and before any done-callback (instead of a first done-callback per record plus
  a second, guarded release).
"""

from __future__ import annotations

import concurrent.futures

import pytest

from eventmesh_http_sink.dispatch.unit import RecordFuture, callback_running, run_callback
from eventmesh_http_sink.errors import SinkError
from eventmesh_http_sink.results import SendResult


def test_run_callback_marks_the_thread_only_while_the_callback_runs_even_nested_or_raising() -> None:
    f, g = RecordFuture("f"), RecordFuture("g")
    seen: list[RecordFuture | None] = []

    def inner(_: int) -> None:
        seen.append(callback_running())

    def outer(x: int) -> None:
        seen.append(callback_running())
        run_callback(g, inner, x)  # a callback that resolves another record inline
        seen.append(callback_running())
        raise ValueError("user code")

    with pytest.raises(ValueError):
        run_callback(f, outer, 1)
    assert seen == [f, g, f]
    assert callback_running() is None  # reset after the raise: the worker thread is not marked
    f.set_result(SendResult("f", None, "http://x/", 200, 1, 0.0))
    assert f.result().status == 200  # this thread may wait on it once its callback is over


def _result(rid: str = "r") -> SendResult:
    return SendResult(rid, None, "http://x/", 200, 1, 0.0)


def test_settle_runs_first_once_the_future_is_done_and_before_any_done_callback() -> None:
    f = RecordFuture("r")
    order: list[object] = []
    f.add_done_callback(lambda fut: order.append("done-callback"))
    f.settle(_result(), lambda arg: order.append(("first", arg, f.done())), 7)
    assert order == [("first", 7, True), "done-callback"]
    assert f.result().record_id == "r"
    err = SinkError("no")
    g = RecordFuture("g")
    g.settle(err, order.append, "g-first")
    assert g.exception() is err and order[-1] == "g-first"


def test_settle_gives_first_its_call_even_when_resolving_fails() -> None:
    f = RecordFuture("r")
    f.set_result(_result())
    calls: list[int] = []
    with pytest.raises(concurrent.futures.InvalidStateError):
        f.settle(_result(), calls.append, 1)  # a second outcome is a bug, but the slot is not lost
    assert calls == [1]
