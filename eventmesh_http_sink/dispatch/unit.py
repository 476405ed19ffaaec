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
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from eventmesh_http_sink.results import SendResult

if TYPE_CHECKING:
    from eventmesh_http_sink.records import ConnectRecord

__all__ = ["RecordFuture", "Unit", "callback_running", "running_callback_of"]

# The RecordFuture whose callback this thread is running (or None), so that
# waiting on it, flush() and close() can refuse to wait for themselves.
_callback_of = threading.local()


def callback_running() -> RecordFuture | None:
    """The Future of the record whose callback runs in this thread, if any."""
    future: RecordFuture | None = getattr(_callback_of, "future", None)
    return future


@contextmanager
def running_callback_of(future: RecordFuture | None) -> Iterator[None]:
    """Mark this thread as running ``future``'s record callback for the block."""
    outer = getattr(_callback_of, "future", None)
    _callback_of.future = future
    try:
        yield
    finally:
        _callback_of.future = outer


class RecordFuture(Future[SendResult]):
    """The Future of one accepted record: a :class:`SendResult` or the record's :class:`SinkError`.

    It resolves once, after the record's callback has returned. ``result()`` and
    ``exception()`` called from that very callback raise ``RuntimeError``: the
    Future cannot resolve before the callback returns.

    Attributes:
        record_id: The record's id (named in the self-wait error).
    """

    def __init__(self, record_id: str) -> None:
        super().__init__()
        self.record_id = record_id
        # Our futures never enter CANCELLED: a record that is not delivered is
        # reported through on_exception(SinkClosedError), like any failure.
        self.set_running_or_notify_cancel()

    def result(self, timeout: float | None = None) -> SendResult:
        """See :meth:`concurrent.futures.Future.result`."""
        self._refuse_own_callback()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """See :meth:`concurrent.futures.Future.exception`."""
        self._refuse_own_callback()
        return super().exception(timeout)

    def _refuse_own_callback(self) -> None:
        if getattr(_callback_of, "future", None) is self:
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
