"""The one place that decides each record's outcome, and the ledger it keeps.

:meth:`Resolver.resolve` claims the unit first: it leaves the ``live`` set by
one ``set.remove``, atomic under the GIL, so of a worker finishing late and
``close`` cancelling at its deadline exactly one claims it, and a second
outcome is impossible by construction. Then, with no lock held, in this order:

1. the failure log and the dead letter (written before the callback);
2. the record's callback, in the ``contextvars`` context of its ``put`` call; it
   is user code, so anything it raises (``SystemExit`` included, as the stdlib's
   ``_WorkItem.run`` guards) is logged and counted, never propagated;
3. the record's Future: when ``future.result()`` returns, the callback has returned;
4. in one lock round, the counters, the metrics and the ``max_pending`` slot, once:
   as the Future becomes done, before the caller's done-callbacks run (or in a
   ``finally`` when it cannot be resolved), so the slot is always given back.

The ledger (``pending``, ``submitted``...) lives here because it changes with the
outcomes: ``submitted == succeeded + failed + pending`` under one lock, the
metrics' own (:attr:`Metrics.lock <eventmesh_http_sink.metrics.Metrics.lock>`),
so both change together.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from eventmesh_http_sink.dispatch.unit import run_callback
from eventmesh_http_sink.errors import QueueFullError, SinkClosedError, SinkError
from eventmesh_http_sink.metrics import error_kind
from eventmesh_http_sink.redact import redact_text
from eventmesh_http_sink.results import SendExceptionContext, SendMessageCallback, SendResult

if TYPE_CHECKING:
    from eventmesh_http_sink.dispatch.unit import Unit
    from eventmesh_http_sink.metrics import Metrics
    from eventmesh_http_sink.outcomes.failure_log import FailureLog
    from eventmesh_http_sink.outcomes.hooks import Hooks

__all__ = ["Resolver", "closed_error", "unexpected_error"]

_log = logging.getLogger("eventmesh_http_sink")

Outcome = SendResult | SinkError


def closed_error(unit: Unit, cause: BaseException | None = None) -> SinkClosedError:
    """The :class:`SinkClosedError` of a record cancelled by ``close``."""
    attempts = unit.attempts
    detail = "before its first attempt" if attempts == 0 else f"after {attempts} attempt(s); outcome unknown"
    err = SinkClosedError(
        f"connector closed before record {unit.record.record_id} finished ({detail})", url=unit.url
    )
    err.__cause__ = cause
    return err


def unexpected_error(unit: Unit, exc: BaseException | None) -> SinkError:
    """The outcome of a record whose attempt raised something no one expected (a bug, user code)."""
    what = "nothing" if exc is None else f"{type(exc).__name__}: {redact_text(str(exc))}"
    err = SinkError(f"unexpected {what} while sending record {unit.record.record_id}", url=unit.url)
    err.__cause__ = exc
    return err


class Resolver:
    """Claims each record once, runs its callback, then resolves its Future; keeps the counters.

    Args:
        hooks: The optional features (the dead letter is written here).
        metrics: Per-URL counts and latency.
        failures: The summarising failure log.
    """

    def __init__(self, hooks: Hooks, metrics: Metrics, failures: FailureLog) -> None:
        self._hooks = hooks
        self._metrics = metrics
        self._failures = failures
        # The metrics' lock: a record's outcome is counted in the ledger and in the
        # metrics in one lock round (_release), and retries likewise (note_retry).
        self.lock = metrics.lock
        self._not_full = threading.Condition(self.lock)
        self._idle = threading.Condition(self.lock)
        # Threads waiting on each Condition (changed under the lock): a release notifies
        # only when someone waits, as Condition.notify costs several Python-level lock
        # calls even with no waiter, on every record.
        self._blocked = self._idlers = 0
        self._live: set[Unit] = set()  # accepted and not yet claimed (broadcast copies too)
        self.pending = 0  # accepted and not finished (callback included)
        self.submitted = self.succeeded = self.failed = self.retried = self.callback_errors = 0

    # -- intake ----------------------------------------------------------------------------

    def admit(
        self,
        unit: Unit,
        max_pending: int,
        wait: float | None,
        closed: Callable[[], bool],
    ) -> None:
        """Take a ``max_pending`` slot for a new record, waiting up to ``wait`` seconds for one.

        Args:
            unit: The record's unit.
            max_pending: The bound.
            wait: ``0`` to raise at once when full (``when_full="raise"``), ``None``
                to wait as long as it takes, else seconds.
            closed: Whether the connector is closed (checked under the lock).

        Raises:
            QueueFullError: no slot within ``wait``.
            SinkClosedError: the connector closed.
        """
        rid = unit.record.record_id
        with self.lock:
            if self.pending >= max_pending:
                if wait == 0:
                    raise QueueFullError(
                        f"record {rid} refused: max_pending ({max_pending}) records are pending"
                    )
                deadline = None if wait is None else time.monotonic() + wait
                while self.pending >= max_pending and not closed():
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise QueueFullError(
                            f"record {rid} refused: max_pending ({max_pending}) records still pending"
                            f" after put_timeout ({wait}s)"
                        )
                    self._blocked += 1
                    try:
                        self._not_full.wait(remaining)
                    finally:  # the lock is held again here, even if the wait raised
                        self._blocked -= 1
            if closed():
                raise SinkClosedError(f"the connector is closed: record {rid} was not accepted")
            self.pending += 1
            self.submitted += 1
            self._live.add(unit)

    def track(self, units: list[Unit]) -> None:
        """Add broadcast copies to the live set (their record already holds the slot)."""
        with self.lock:
            self._live.update(units)

    def wake_blocked(self) -> None:
        """Wake ``put`` calls blocked on a full queue (they re-check ``closed``)."""
        with self.lock:
            self._not_full.notify_all()

    # -- outcomes --------------------------------------------------------------------------

    def note_retry(self, url: str | None, error: SinkError) -> None:
        """Count a retry that was put on the timer."""
        kind = error_kind(error)
        with self.lock:
            self.retried += 1
            self._metrics.count_retry(url, kind)

    def is_live(self, unit: Unit) -> bool:
        """Whether ``unit`` still waits for its outcome (a lock-free read: set lookup is atomic)."""
        return unit in self._live

    def resolve(self, unit: Unit, outcome: Outcome) -> bool:
        """Report ``unit``'s outcome once; later calls for the same unit do nothing."""
        # The claim needs no lock: set.remove is one atomic step under the GIL (a Unit
        # hashes by identity, in C), so of two threads removing the same unit exactly
        # one succeeds. claim_all pops one unit at a time for the same reason.
        try:
            self._live.remove(unit)
        except KeyError:
            return False
        self.finish(unit, outcome)
        return True

    def claim_all(self) -> list[Unit]:
        """Claim every live record at ``close``'s deadline; :meth:`finish` each of them.

        Broadcast copies are dropped: their record is claimed with them.
        """
        live = self._live
        units = []
        with self.lock:  # ordered after any admit() still adding a record
            while True:  # one atomic pop per unit: a worker's resolve() cannot claim it too
                try:
                    units.append(live.pop())
                except KeyError:
                    break
        return [unit for unit in units if unit.join is None]

    def finish(self, unit: Unit, outcome: Outcome) -> None:
        """Report the outcome of a unit claimed by :meth:`resolve` or :meth:`claim_all`."""
        if unit.join is not None:  # a broadcast copy: its record resolves when the last copy is in
            try:
                self._metrics.outcome(
                    unit.url,
                    time.monotonic() - unit.t0,
                    None if isinstance(outcome, SendResult) else outcome,
                    True,
                )
            finally:
                unit.join.child_done(unit, outcome)
            return
        try:
            self._account(unit, outcome)
        finally:
            try:
                # One hop into the put's context for the callback and the Future (whose
                # done-callbacks run in it too), instead of one each.
                unit.context.run(self._conclude, unit, outcome)
            finally:
                if not unit.released:  # defensive: the context could not be entered
                    self._release(unit)

    def _account(self, unit: Unit, outcome: Outcome) -> None:
        if isinstance(outcome, SendResult):
            unit.elapsed = outcome.elapsed  # measured as the attempt settled: no second clock read
            return
        unit.elapsed = time.monotonic() - unit.t0
        unit.kind = error_kind(outcome)  # counted with the ledger, in _release
        if outcome.url is None:
            outcome.url = unit.url
        if not isinstance(outcome, SinkClosedError):
            self._failures.failed(unit.record.record_id, unit.attempts, outcome)  # summarised per kind
        self._hooks.on_failure(unit, outcome)  # the dead letter is written before the callback runs

    def _conclude(self, unit: Unit, outcome: Outcome) -> None:
        # In the put's context: the callback, then the Future; the slot is given back
        # between the Future's state change and the caller's done-callbacks.
        unit.succeeded = isinstance(outcome, SendResult)
        callback = unit.record.callback
        if callback is not None:
            unit.callback_failed = self._run_callback(unit, callback, outcome)
        future = unit.future
        if future is None:
            self._release(unit)
        else:
            future.settle(outcome, self._release, unit)

    def _run_callback(self, unit: Unit, callback: SendMessageCallback, outcome: Outcome) -> bool:
        """Run the record's callback; ``True`` if it raised (anything: it is user code)."""
        try:
            if isinstance(outcome, SendResult):
                run_callback(unit.future, callback.on_success, outcome)
            else:
                record = unit.record
                context = SendExceptionContext(
                    record.record_id,
                    record.topic,
                    unit.url,
                    outcome,
                    unit.attempts,
                    unit.elapsed,
                    outcome.status,
                )
                run_callback(unit.future, callback.on_exception, context)
        except BaseException:  # user code, even SystemExit, must not stop a worker
            _log.exception("callback of record %s raised; the connector goes on", unit.record.record_id)
            return True
        return False

    def _release(self, unit: Unit) -> None:
        # Give the record's max_pending slot back and count its outcome, once: from
        # RecordFuture.settle, or from finish when that could not run. The flag is
        # only ever set in the resolving thread, so finish reads it without the lock.
        with self.lock:
            if unit.released:
                return
            unit.released = True
            self.pending -= 1
            if unit.succeeded:
                self.succeeded += 1
            else:
                self.failed += 1
            self.callback_errors += unit.callback_failed
            self._metrics.count_outcome(unit.url, unit.elapsed, unit.kind)
            if self._blocked:
                self._not_full.notify()
            if self._idlers and self.pending == 0:
                self._idle.notify_all()

    # -- waiting ---------------------------------------------------------------------------

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until nothing is pending; ``False`` if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            while self.pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idlers += 1
                try:
                    self._idle.wait(remaining)
                finally:
                    self._idlers -= 1
        return True
