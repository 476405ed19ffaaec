"""Retry decisions and the scheduler where records wait out their backoff.

A record waiting to be retried holds no worker thread: :class:`RetryScheduler`
keeps it in a heap and one timer thread hands it back to the executor when it
is due. Waits come from ``backoff.expo`` with ``backoff.full_jitter``; a
``Retry-After`` header replaces the computed wait.
"""

from __future__ import annotations

import datetime
import email.utils
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

import backoff

from eventmesh_http_sink.config import RetryConfig
from eventmesh_http_sink.errors import HttpStatusError, SinkError

__all__ = ["RetryPolicy", "RetryScheduler", "parse_retry_after"]

T = TypeVar("T")
_log = logging.getLogger("eventmesh_http_sink")
_bad_retry_after_logged = False
Waits = Generator[float, Any, None]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for, or ``None``.

    RFC 9110 allows delta-seconds (ASCII digits) or an HTTP date, nothing else:
    anything else (``"²"``, ``"1.5"``, ``"soon"``) gives ``None``, so the computed
    backoff applies; the first such value is logged at DEBUG.
    """
    global _bad_retry_after_logged  # noqa: PLW0603 - a log-once flag
    if not value:
        return None
    value = value.strip()
    if value.isascii():  # str.isdigit() alone accepts "²" and other non-ASCII digits
        if value.isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):  # OverflowError: a year like 10**20
            when = None
        if when is not None:
            if when.tzinfo is None:  # the asctime form has no zone: HTTP dates are GMT
                when = when.replace(tzinfo=datetime.UTC)
            current = time.time() if now is None else now
            return max(0.0, when.timestamp() - current)
    if not _bad_retry_after_logged:
        _bad_retry_after_logged = True
        _log.debug(
            "Retry-After %r is neither delta-seconds nor an HTTP date: using the computed backoff", value[:64]
        )
    return None


class RetryPolicy:
    """Decides whether a failed attempt is retried, and after how long."""

    def __init__(self, config: RetryConfig) -> None:
        self.config = config
        self._statuses = frozenset(config.retry_on_status)

    def is_retryable(self, error: SinkError) -> bool:
        """Whether this error may succeed on a later attempt."""
        if isinstance(error, HttpStatusError):
            return error.status in self._statuses
        return error.retryable

    def new_waits(self) -> Waits:
        """A fresh wait generator for one record: ``initial * 2**n`` capped at ``max_backoff``."""
        cfg = self.config
        waits = backoff.expo(base=2, factor=cfg.initial_backoff, max_value=cfg.max_backoff)
        next(waits)  # backoff's generators are primed with a first next()
        return waits

    def next_wait(self, error: SinkError, attempts: int, elapsed: float, waits: Waits) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up.

        Args:
            error: Why the last attempt failed.
            attempts: Attempts made so far (the first counts as 1).
            elapsed: Seconds since the record was accepted.
            waits: The record's generator from :meth:`new_waits`.
        """
        cfg = self.config
        if attempts > cfg.max_retries or not self.is_retryable(error):
            return None
        retry_after = getattr(error, "retry_after", None)
        if cfg.respect_retry_after and retry_after is not None:
            wait = float(retry_after)
        else:
            wait = backoff.full_jitter(next(waits))
        if elapsed + wait >= cfg.max_elapsed:
            return None  # the next attempt would start past the budget
        return wait


class RetryScheduler(Generic[T]):
    """Hands items back to ``resubmit`` when their wait is over, from one daemon thread.

    The thread starts with the first :meth:`schedule` and sleeps on a condition
    until the earliest due time, so an idle scheduler costs nothing.
    """

    def __init__(self, resubmit: Callable[[T], None], name: str = "eventmesh-http-sink-retry") -> None:
        self._resubmit = resubmit
        self._name = name
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._stopped = False

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, delay: float, item: T) -> bool:
        """Queue ``item`` for ``delay`` seconds; ``False`` if the scheduler is stopped."""
        due = time.monotonic() + delay
        with self._cv:
            if self._stopped:
                return False
            heapq.heappush(self._heap, (due, next(self._seq), item))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif self._heap[0][2] is item:
                self._cv.notify()  # the new item is due before the one being waited on
        return True

    def stop(self) -> list[T]:
        """Stop the thread; return the items that were still waiting."""
        with self._cv:
            self._stopped = True
            items = [entry[2] for entry in self._heap]
            self._heap.clear()
            self._cv.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        return items

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopped:
                    if self._heap:
                        delay = self._heap[0][0] - time.monotonic()
                        if delay <= 0:
                            break
                        self._cv.wait(delay)
                    else:
                        self._cv.wait()
                if self._stopped:
                    return
                _, _, item = heapq.heappop(self._heap)
            # Outside the lock: resubmitting may block briefly on the executor.
            try:
                self._resubmit(item)
            except BaseException:  # the timer thread serves every waiting record: it must go on
                _log.exception("handing a waiting record back failed; the timer goes on")
