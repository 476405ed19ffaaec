"""The outcome side's cheap paths (issue 14): each keeps the contract it replaced.

* :func:`run_callback` marks the thread only while a record's callback runs (a plain
  thread-local set and reset instead of a generator context manager).
"""

from __future__ import annotations

import pytest

from eventmesh_http_sink.dispatch.unit import RecordFuture, callback_running, run_callback
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
