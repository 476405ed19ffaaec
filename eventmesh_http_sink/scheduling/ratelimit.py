"""A token bucket shared by all workers: at most ``rate`` requests per second, bursts of ``burst``.

:meth:`TokenBucket.reserve` never sleeps: it takes a token, possibly one that
has not been earned yet, and returns how long the caller must wait before
using it. The connector hands that wait to a timer instead of sleeping on a
worker, and reserved slots are spaced exactly ``1/rate`` apart, so a backlog
drains at the configured rate without piling onto the bucket together.
"""

from __future__ import annotations

import threading
import time
import typing
from collections.abc import Callable

from eventmesh_http_sink import forksafe

__all__ = ["TokenBucket"]


class TokenBucket:
    """A thread-safe token bucket that hands out reservations.

    Args:
        rate: Tokens earned per second.
        burst: The bucket's capacity (defaults to ``rate``, at least 1).
        clock: A monotonic clock, for tests.
    """

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = float(rate)
        self.burst = max(1.0, float(rate if burst is None else burst))
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()
        self._lock = threading.Lock()
        forksafe.register(self)

    def after_fork_in_child(self) -> None:
        """A parent thread may have held the lock at the fork: a fresh one for the child."""
        forksafe.reinit(self._lock)

    @typing.overload
    def reserve(self) -> float: ...
    @typing.overload
    def reserve(self, max_wait: float) -> float | None: ...

    def reserve(self, max_wait: float | None = None) -> float | None:
        """Take one token; return the seconds to wait before it may be used (0 when available).

        Args:
            max_wait: When the token would take longer than this, take nothing and
                return ``None`` (a record whose retry budget ends first must not
                push every later reservation back).
        """
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            wait = 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate
            if max_wait is not None and wait > max_wait:
                return None
            self._tokens -= 1.0  # may go negative: later callers queue behind this reservation
            return wait
