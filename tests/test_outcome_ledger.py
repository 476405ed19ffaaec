"""The outcome side's cheap paths (issue 14): each keeps the contract it replaced.

* :func:`run_callback` marks the thread only while a record's callback runs (a plain
  thread-local set and reset instead of a generator context manager).
* :meth:`RecordFuture.settle` gives the record's slot back once, as the Future becomes
  done and before any done-callback (instead of a first done-callback per record plus
  a second, guarded release).
* The resolver notifies its Conditions only when a thread waits on them: a ``put``
  blocked on ``max_pending`` and a ``flush`` are still woken by each release.
* :class:`RecordFuture` resolves with no lock when no one waits: the outcome and a
  Condition race through a gate (first append wins), and a waiter that comes
  between the outcome and its state write still sees the Future done, at once.
* The lock that makes a RecordFuture's Condition is re-made in a forked child.
* :class:`SendResult`'s hand-written ``__init__`` sets each field as attrs' would.
* The ledger and the metrics share one lock: a record is counted in both in one
  round, as its slot is given back (after its callback), never in one only.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import logging
import pickle
import threading
from typing import Any

import attrs
import pytest

from eventmesh_http_sink import ConnectRecord, HttpSinkConfig
from eventmesh_http_sink.dispatch import unit as unit_module
from eventmesh_http_sink.dispatch.unit import RecordFuture, Unit, callback_running, run_callback
from eventmesh_http_sink.errors import SinkError
from eventmesh_http_sink.metrics import Metrics
from eventmesh_http_sink.outcomes.failure_log import FailureLog
from eventmesh_http_sink.outcomes.hooks import Hooks
from eventmesh_http_sink.outcomes.resolver import Resolver
from eventmesh_http_sink.results import SendResult
from tests.forking import run_in_forked_child

WAIT = 10.0  # seconds: only a lost wake-up gets near it


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


def _resolver(metrics: Metrics | None = None) -> Resolver:
    config = HttpSinkConfig(["http://127.0.0.1:9/x"])
    return Resolver(Hooks(config, None), metrics or Metrics(), FailureLog(logging.getLogger("test")))


def _unit(i: int, callback: object = None) -> Unit:
    record = ConnectRecord({"i": i}, callback=callback)
    return Unit(record, b"", {}, contextvars.copy_context(), future=RecordFuture(record.record_id))


def test_puts_blocked_on_max_pending_are_woken_one_per_freed_slot() -> None:
    resolver = _resolver()
    first = _unit(0)
    resolver.admit(first, 1, None, lambda: False)
    admitted: list[Unit] = []

    def put(unit: Unit) -> None:
        resolver.admit(unit, 1, 4 * WAIT, lambda: False)  # a lost wake-up: QueueFullError, late
        admitted.append(unit)

    blocked = [_unit(i) for i in (1, 2, 3)]
    threads = [threading.Thread(target=put, args=(u,)) for u in blocked]
    for t in threads:
        t.start()
    threads[0].join(0.2)
    assert admitted == []  # all three wait for the one slot
    for n in (1, 2, 3):
        holder = first if n == 1 else admitted[-1]
        assert resolver.resolve(holder, _result(holder.record.record_id))
        pause = threading.Event()
        for _ in range(int(WAIT / 0.01)):  # the release wakes exactly one put (no timing asserted)
            if len(admitted) == n:
                break
            pause.wait(0.01)
        assert len(admitted) == n, f"a put blocked on max_pending missed the release of slot {n}"
    for t in threads:
        t.join(WAIT)
    assert resolver.resolve(admitted[-1], _result())
    assert (resolver.submitted, resolver.succeeded, resolver.pending) == (4, 4, 0)


def test_a_flush_waiting_for_idle_is_woken_by_the_last_release() -> None:
    resolver = _resolver()
    units = [_unit(i) for i in range(3)]
    for u in units:
        resolver.admit(u, 10, None, lambda: False)
    answer: list[bool] = []
    waiter = threading.Thread(target=lambda: answer.append(resolver.wait_idle(4 * WAIT)))
    waiter.start()
    waiter.join(0.2)
    assert answer == []
    for u in units:
        resolver.resolve(u, _result())
    waiter.join(WAIT)
    assert answer == [True], "flush() missed the last release"
    assert resolver.wait_idle(0)  # nothing pending: returns at once, no Condition wait


def test_a_record_is_counted_in_the_ledger_and_the_metrics_together_after_its_callback() -> None:
    metrics = Metrics()
    resolver = _resolver(metrics)
    seen: list[tuple[int, int, int, int]] = []

    def counts() -> tuple[int, int, int, int]:
        per_url, _, failures, latency = metrics.snapshot()
        with resolver.lock:
            ledger = resolver.succeeded + resolver.failed
        return (
            ledger,
            latency.count,
            sum(u.succeeded + u.failed for u in per_url.values()),
            sum(failures.values()),
        )

    class Callback:
        def on_success(self, result: SendResult) -> None:
            seen.append(counts())

        def on_exception(self, context: object) -> None:
            seen.append(counts())

    ok, bad = _unit(0, Callback()), _unit(1, Callback())
    for u in (ok, bad):
        resolver.admit(u, 10, None, lambda: False)
    ok.url = bad.url = "http://127.0.0.1:9/x"
    resolver.resolve(ok, _result())
    resolver.resolve(bad, SinkError("refused"))
    after = counts()
    # In its callback a record is in neither the ledger nor the metrics; after it, in both.
    assert seen == [(0, 0, 0, 0), (1, 1, 1, 0)]
    assert after == (2, 2, 2, 1)
    resolver.note_retry("http://127.0.0.1:9/x", SinkError("again"))
    per_url, retries, _, _ = metrics.snapshot()
    assert (
        resolver.retried == 1 and retries == {"SinkError": 1} and per_url["http://127.0.0.1:9/x"].retried == 1
    )


def test_send_result_s_own_init_sets_each_field_as_attrs_would() -> None:
    values = ("rid", "topic", "http://u/", 201, 2, 0.5, b"body", {"http://u/": 201})
    r = SendResult(*values)
    assert tuple(getattr(r, f.name) for f in attrs.fields(SendResult)) == values  # field order
    assert SendResult(**{f.name: v for f, v in zip(attrs.fields(SendResult), values, strict=True)}) == r
    short = SendResult("rid", None, None, 200, 1, 0.0)
    assert (short.response_body, short.per_url) == (b"", None)  # the defaults
    assert attrs.evolve(short, status=204).status == 204
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        short.status = 500  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(r)) == r  # noqa: S301 - our own bytes
    assert hash(short) == hash(SendResult("rid", None, None, 200, 1, 0.0))


class _PausingGate(list[object]):
    """A RecordFuture's gate that holds the resolving thread right after its append."""

    def __init__(self, resolver: str) -> None:
        super().__init__()
        self.resolver = resolver
        self.appended = threading.Event()
        self.go = threading.Event()

    def append(self, item: object) -> None:
        super().append(item)
        if threading.current_thread().name == self.resolver:
            self.appended.set()
            self.go.wait(WAIT)


@pytest.mark.parametrize("how", ["result", "wait"])
def test_a_waiter_between_the_outcome_and_its_state_write_sees_the_future_done(how: str) -> None:
    f, g = RecordFuture("f"), RecordFuture("g")
    gate = f._gate = _PausingGate("resolver")
    resolver = threading.Thread(target=f.set_result, args=(_result("f"),), name="resolver")
    resolver.start()
    assert gate.appended.wait(WAIT)  # the outcome is in the gate; the state not yet written
    try:
        if how == "result":
            # Makes the Condition after the outcome: must not wait for a notify that never comes.
            assert f.result(timeout=WAIT / 2).record_id == "f"
        else:
            answer: list[Any] = []
            waiter = threading.Thread(target=lambda: answer.append(concurrent.futures.wait([f, g], WAIT)))
            waiter.start()
            waiter.join(0.2)
            gate.go.set()
            resolver.join(WAIT)
            g.set_result(_result("g"))
            waiter.join(WAIT)
            done, not_done = answer[0]
            assert done == {f, g} and not not_done  # f counted once: wait() returned for g, not early
    finally:
        gate.go.set()
        resolver.join(WAIT)
    assert f.done() and f.result().record_id == "f"


def test_waiting_on_a_future_in_a_forked_child_works_while_a_parent_thread_made_a_condition() -> None:
    held, release = threading.Event(), threading.Event()

    def holder() -> None:  # a parent thread making a Condition at the fork
        with unit_module._make_condition:
            held.set()
            release.wait(WAIT)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(WAIT)

        def child() -> str:
            answer: list[str] = []

            def wait_on_a_future() -> None:
                try:
                    RecordFuture("child").result(timeout=0.05)
                except concurrent.futures.TimeoutError:
                    answer.append("timed out")

            waiter = threading.Thread(target=wait_on_a_future, daemon=True)
            waiter.start()
            waiter.join(5)
            return answer[0] if answer else "stuck"

        assert run_in_forked_child(child) == "timed out"
    finally:
        release.set()
        thread.join(WAIT)
