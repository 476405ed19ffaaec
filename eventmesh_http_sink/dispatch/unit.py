"""A record on its way: the Future that ``put`` returns and the unit the workers move.

:class:`RecordFuture` is what the caller holds. It resolves after the record's
callback has returned (see :mod:`eventmesh_http_sink.outcomes.resolver`), so a
callback that waited for its own Future would wait for itself: it gets a
``RuntimeError`` naming the record instead of a deadlock.

:class:`Unit` is what the queue, the batcher, the timers and the attempts pass
around: the encoded request plus the bookkeeping of its attempts. A record is
one unit; a broadcast record is one unit for the record and one pinned copy per
URL, each copy reporting to the record's :class:`~.strategies.BroadcastJoin`.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import typing
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import TYPE_CHECKING, Any, TypeVar

from eventmesh_http_sink import forksafe
from eventmesh_http_sink.results import SendResult

if TYPE_CHECKING:
    from eventmesh_http_sink.records import ConnectRecord

__all__ = ["RecordFuture", "Unit", "callback_running", "run_callback"]

_A = TypeVar("_A")


class _CallbackOf(threading.local):
    # The RecordFuture whose callback this thread is running (None: none), so that
    # waiting on it, flush() and close() can refuse to wait for themselves. A class
    # default, so reading it needs no getattr fallback.
    future: RecordFuture | None = None


_callback_of = _CallbackOf()


def callback_running() -> RecordFuture | None:
    """The Future of the record whose callback runs in this thread, if any."""
    return _callback_of.future


def run_callback(future: RecordFuture | None, fn: Callable[[_A], object], arg: _A) -> None:
    """Call ``fn(arg)`` as the callback of ``future``'s record (waiting on ``future`` in it raises).

    A plain set and reset of a thread-local, not a ``contextmanager``: this runs once per
    record, and the generator-based context manager cost ten times the callback's own call.
    """
    local = _callback_of
    outer = local.future
    local.future = future
    try:
        fn(arg)
    finally:
        local.future = outer


# Future states (the strings concurrent.futures uses; compared by value).
_RUNNING = "RUNNING"
_FINISHED = "FINISHED"
_DONE_STATES = ("CANCELLED", "CANCELLED_AND_NOTIFIED", _FINISHED)
# Makes a RecordFuture's Condition, once, for the rare caller that waits on it; re-made
# released in a forked child (a parent thread may hold it at the fork).
_make_condition = forksafe.module_lock()
# In a RecordFuture's gate: the outcome came before any Condition (see RecordFuture._finish).
_RESOLVED = "resolved"
_futures_log = logging.getLogger("concurrent.futures")  # where Future logs a done-callback's error


class RecordFuture(Future[SendResult]):
    """The Future of one accepted record: a :class:`SendResult` or the record's :class:`SinkError`.

    It resolves once, after the record's callback has returned. ``result()`` and
    ``exception()`` called from that very callback raise ``RuntimeError``: the
    Future cannot resolve before the callback returns.

    It is a :class:`concurrent.futures.Future` in every way a caller can see
    (``result``/``exception`` with a timeout, ``add_done_callback``,
    ``concurrent.futures.wait`` and ``as_completed``), but it makes its
    ``Condition`` only when someone needs one (a wait on an unfinished Future,
    ``wait``/``as_completed``, ``cancel``...): most records are never waited on,
    and the Condition (an ``RLock``, a waiter list, six lock rounds) was the
    costliest object of a record's life. Without it, resolving is lock-free:

    * the resolver and the first thread that makes a Condition each append to a
      per-Future list, the gate (``list.append`` is atomic): whichever is first in
      it wins. If the outcome came first, the state is written without a lock and
      no waiter can be waiting (a Condition made later sees the state final). If a
      Condition came first, the state changes under it, as in
      ``concurrent.futures``, so a waiter sees the Future either running (and is
      notified) or done (and is not), never both;
    * done-callbacks are taken off their list with ``list.pop`` (atomic): each one
      runs exactly once, in the resolving thread or, added after the end, in the
      adding thread.

    Attributes:
        record_id: The record's id (named in the self-wait error).
    """

    def __init__(self, record_id: str) -> None:
        # Future.__init__ is not called: it would build the Condition. Its other fields:
        # our futures start RUNNING (never CANCELLED: a record that is not delivered is
        # reported through on_exception(SinkClosedError), like any failure).
        self._state = _RUNNING
        self._result: SendResult | None = None
        self._exception: BaseException | None = None
        # No _waiters list (concurrent.futures.wait's, only ever used under the
        # Condition) until a Condition is made: most Futures never have one.
        self._done_callbacks: list[Callable[[Future[SendResult]], object]] = []
        self._gate: list[object] = []  # _RESOLVED or the Condition, first come first
        self._cond: threading.Condition | None = None
        self.record_id = record_id

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        # What Future's own methods and concurrent.futures.wait/as_completed lock.
        cond = self._cond
        if cond is None:
            with _make_condition:  # one Condition per Future, however many threads ask
                cond = self._cond
                if cond is None:
                    cond = threading.Condition()
                    self._waiters: list[Any] = []  # before the gate: _finish may use it at once
                    gate = self._gate
                    gate.append(cond)
                    if gate[0] is not cond:
                        # The outcome came first (result and exception are set): the state
                        # is final for everyone who waits from now on, even if the resolver
                        # has not written it yet. Nothing waits on this Future yet.
                        self._state = _FINISHED
                    self._cond = cond
        return cond

    def done(self) -> bool:
        """See :meth:`concurrent.futures.Future.done`."""
        return self._state in _DONE_STATES

    def result(self, timeout: float | None = None) -> SendResult:
        """See :meth:`concurrent.futures.Future.result`."""
        self._refuse_own_callback()
        if self._state == _FINISHED:  # no Condition for a Future that is already done
            if self._exception is not None:
                raise self._exception
            return typing.cast(SendResult, self._result)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """See :meth:`concurrent.futures.Future.exception`."""
        self._refuse_own_callback()
        if self._state == _FINISHED:
            return self._exception
        return super().exception(timeout)

    def add_done_callback(self, fn: Callable[[Future[SendResult]], object]) -> None:
        """See :meth:`concurrent.futures.Future.add_done_callback`."""
        self._done_callbacks.append(fn)
        if self._state in _DONE_STATES:  # resolved meanwhile: whoever pops it first runs it
            self._invoke_callbacks()

    def set_result(self, result: SendResult) -> None:
        """See :meth:`concurrent.futures.Future.set_result`."""
        if self._state in _DONE_STATES:
            raise InvalidStateError(f"{self._state}: {self!r}")
        self._result = result
        self._finish()
        self._invoke_callbacks()

    def set_exception(self, exception: BaseException | None) -> None:
        """See :meth:`concurrent.futures.Future.set_exception`."""
        if self._state in _DONE_STATES:
            raise InvalidStateError(f"{self._state}: {self!r}")
        self._exception = exception
        self._finish()
        self._invoke_callbacks()

    def settle(self, outcome: SendResult | BaseException, first: Callable[[_A], object], arg: _A) -> None:
        """Resolve with ``outcome`` (a result, or the exception to raise); the resolver calls it once.

        ``first(arg)`` runs once the Future is done and before any done-callback run by the
        resolving thread (one that another thread adds in that short window may run first:
        harmless): the resolver gives the record's ``max_pending`` slot back there, so a done-callback
        that calls ``flush()`` does not wait for its own record, and ``flush()`` never
        returns before the Futures it waited for are done. It runs even if resolving
        raised (``InvalidStateError`` on a second outcome: a bug), so the slot is never lost.
        """
        try:
            if self._state in _DONE_STATES:
                raise InvalidStateError(f"{self._state}: {self!r}")
            if isinstance(outcome, BaseException):
                self._exception = outcome
            else:
                self._result = outcome
            self._finish()
        finally:
            first(arg)
        if self._done_callbacks:
            self._invoke_callbacks()

    def _finish(self) -> None:
        # The state changes (waiters notified); the done-callbacks are the caller's to run.
        # Called once the result or the exception is set. No lock when no one waits: the
        # gate decides whether the outcome or a Condition came first.
        gate = self._gate
        gate.append(_RESOLVED)
        first = gate[0]
        if first is _RESOLVED:
            self._state = _FINISHED  # no Condition existed: no waiter to notify
        else:
            cond = typing.cast(threading.Condition, first)
            # As concurrent.futures does: the state changes under the Condition, so a
            # wait() installing its waiter sees the Future either running (and is
            # notified) or done (and is not), never both: both would count it twice.
            with cond:
                self._state = _FINISHED
                for waiter in self._waiters:
                    if self._exception is not None:
                        waiter.add_exception(self)
                    else:
                        waiter.add_result(self)
                cond.notify_all()

    def _invoke_callbacks(self) -> None:
        callbacks = self._done_callbacks
        while callbacks:
            try:
                fn = callbacks.pop(0)
            except IndexError:  # another thread took the last one
                return
            try:
                fn(self)
            except Exception:
                _futures_log.exception("exception calling callback for %r", self)

    def _refuse_own_callback(self) -> None:
        if _callback_of.future is self:
            raise RuntimeError(
                f"the callback of record {self.record_id} waits for its own Future, which resolves"
                " only after that callback returns (use the result or context it was given)"
            )


class Unit:
    """One record (or one broadcast copy of it) and the state of its attempts.

    Attributes:
        record: The record.
        body: The encoded request body.
        headers: The request headers (auth included; never logged).
        context: The ``contextvars`` context of the ``put`` call (callbacks run in it).
        future: The caller's Future (``None`` for a broadcast copy).
        join: The broadcast join a copy reports to (``None`` otherwise).
        pin: Broadcast: the one URL this copy goes to.
        hop: Failover: the index of the URL to try first.
        item: Batching: the record's element of a batch body.
        t0: ``time.monotonic()`` when the record was accepted.
        attempts: Attempts started so far.
        url: The URL of the last attempt.
        waits: The retry backoff generator (made at the first retry).
        elapsed: Seconds from acceptance to outcome.
        succeeded: The outcome was a success (set when the record finishes).
        kind: The final error's ``error_kind`` label (``None``: success), counted
            with the ledger when the record's slot is given back.
        callback_failed: The record's callback raised.
        released: The record's ``max_pending`` slot was given back.
    """

    __slots__ = (
        "attempts",
        "body",
        "callback_failed",
        "context",
        "elapsed",
        "future",
        "headers",
        "hop",
        "item",
        "join",
        "kind",
        "pin",
        "record",
        "released",
        "succeeded",
        "t0",
        "url",
        "waits",
    )

    def __init__(
        self,
        record: ConnectRecord,
        body: bytes,
        headers: dict[str, str],
        context: contextvars.Context,
        *,
        future: RecordFuture | None,
        item: bytes = b"",
    ) -> None:
        self.record = record
        self.body = body
        self.headers = headers
        self.context = context
        self.future = future
        self.item = item
        self.join: Any = None
        self.pin: str | None = None
        self.hop = 0
        self.t0 = 0.0
        self.attempts = 0
        self.url: str | None = None
        self.waits: Any = None
        self.elapsed = 0.0
        # Set by the resolver when the record finishes; its slot is released once.
        self.succeeded = False
        self.kind: str | None = None
        self.callback_failed = False
        self.released = False

    def __repr__(self) -> str:
        return f"<Unit {self.record.record_id} attempts={self.attempts}>"

    def copy_to(self, url: str, join: Any) -> Unit:
        """A broadcast copy pinned to ``url``, reporting to ``join``."""
        # A context object of its own (one context cannot be entered by two threads at
        # once); a copy, so tracing still sees the span current at put.
        child = Unit(self.record, self.body, self.headers, self.context.copy(), future=None, item=self.item)
        child.pin = url
        child.join = join
        child.t0 = self.t0
        return child
