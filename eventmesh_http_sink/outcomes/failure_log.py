"""Failure logging that grows with outages, not with records.

An endpoint that is down fails every record: one WARNING line per record turns
an outage of 10,000 records into 10,000 lines of record ids. :class:`FailureLog`
logs the first failure of each kind (an HTTP status or an error class) per URL
at WARNING, with the record id and the error, then counts the rest and logs one
WARNING summary line per interval::

    1,234 more records failed in the last 10 s: http_503 1,200, ResponseError 34

Every failure still gets its own line at DEBUG, and the record's callback and
dead letter see every failure: only the log is summarised.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from eventmesh_http_sink.errors import SinkError
from eventmesh_http_sink.metrics import error_kind
from eventmesh_http_sink.redact import redact_text, redact_url

__all__ = ["FailureLog"]

_FAILED = "record %s failed after %d attempt(s): %s"


class FailureLog:
    """Logs final record failures: the first of each kind, then a summary per interval.

    Thread-safe. The summary of an interval is logged by a timer thread when the
    interval ends (a ``threading.Timer``, alive only while an interval has failures
    to report), and whatever is left by :meth:`close`. After ``close`` every failure
    is logged at WARNING on its own: no timer outlives the connector.

    Args:
        logger: Where to log.
        interval: Seconds between summary lines.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._lock = threading.Lock()
        self._seen: set[tuple[str | None, str]] = set()  # (url, kind) already logged at WARNING
        self._counts: collections.Counter[str] = collections.Counter()  # kind -> failures this interval
        self._window_start = 0.0
        self._last_failure = -float("inf")
        self._timer: threading.Timer | None = None
        self._closed = False

    def failed(self, record_id: str, attempts: int, error: SinkError) -> None:
        """Log one record's final failure (its first of a kind at WARNING, else counted)."""
        kind = error_kind(error)
        now = time.monotonic()
        with self._lock:
            if now - self._last_failure > self._interval and not self._counts:
                # A quiet interval ended the last outage: the next one is told from its start.
                self._seen.clear()
            self._last_failure = now
            key = (error.url, kind)
            first = key not in self._seen or self._closed
            if first:
                self._seen.add(key)
            else:
                if not self._counts:
                    self._window_start = now
                self._counts[kind] += 1
                if self._timer is None:
                    self._timer = threading.Timer(self._interval, self._on_timer)
                    self._timer.name = "eventmesh-http-sink-failure-log"
                    self._timer.daemon = True  # never holds up interpreter exit
                    self._timer.start()
        # The error's text and URL may carry a query-string secret (?api_key=...).
        if first:
            self._logger.warning(
                _FAILED + " (the first %s failure%s; more are summarised every %g s)",
                record_id,
                attempts,
                redact_text(str(error)),
                kind,
                f" from {redact_url(error.url)}" if error.url else "",
                self._interval,
            )
        else:
            self._logger.debug(_FAILED, record_id, attempts, redact_text(str(error)))

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            line = self._take_summary()
        if line:
            self._logger.warning("%s", line)

    def _take_summary(self) -> str | None:
        # Under the lock: the interval's counts as one line, and a fresh interval.
        total = sum(self._counts.values())
        if not total:
            return None
        elapsed = time.monotonic() - self._window_start
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in self._counts.most_common())
        self._counts.clear()
        noun = "record" if total == 1 else "records"
        return f"{total:,} more {noun} failed in the last {_seconds(elapsed)}: {kinds}"

    def close(self) -> None:
        """Log what is still counted and stop the timer; later failures are logged one by one."""
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
            line = self._take_summary()
        if timer is not None:
            timer.cancel()
        if line:
            self._logger.warning("%s", line)


def _seconds(elapsed: float) -> str:
    return f"{elapsed:.0f} s" if elapsed >= 1.5 else f"{elapsed:.1f} s"
