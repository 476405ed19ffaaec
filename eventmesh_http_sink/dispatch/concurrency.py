"""How many worker threads send at once: an adaptive limit below ``max_workers``.

With the GIL, threads that all have work contend for it: against an endpoint
that answers at once, 16 runnable threads deliver less than 2 or 3 do, because
every socket call releases the GIL and must win it back. Against a slow endpoint
every thread waits on the network, and all ``max_workers`` are needed.

:class:`ConcurrencyLimit` tells the two apart from the attempts' own latencies
(a gradient limiter, after Netflix's ``concurrency-limits``): when latency stays
at its observed minimum, more concurrency is free and the limit grows (doubling
while latency is flat); when latency grows with concurrency, the threads only
queue for the GIL (or the endpoint is saturated) and the limit shrinks towards
``limit * min_latency / latency`` plus a little headroom. A window whose *every*
2xx took 5 ms or more lifts the limit to ``max_workers`` at once (and so does
the first 2xx over 20 ms of an endpoint never seen fast): such an endpoint is slow,
and concurrency is what it needs. (One slow 2xx is not
enough: with many threads runnable, an attempt waits that long for the GIL
now and then, and taking it for a slow endpoint kept 16 threads convoying on
the GIL against a fast one.)

Observations are added without a lock (a lost sample costs nothing); the
update at the end of a window runs in one thread at a time.
"""

from __future__ import annotations

import math
import threading
import time

__all__ = ["ConcurrencyLimit"]

# A window of 2xx all slower than this (a GIL wait delays some attempts, never all)
# means the endpoint, not the GIL, sets the pace: every worker is useful at once (a
# slow endpoint must not wait for the gradual ramp).
_SLOW_S = 0.005
# One 2xx this slow, from an endpoint never seen answering fast (the connector's first
# answers: connecting and starting threads take a few ms), lifts the limit at once.
_SLOW_FIRST_S = 0.02
# The long-term minimum latency creeps up by this fraction per second, so a
# permanently slower endpoint is learnt again.
_MIN_DECAY_PER_S = 0.05


class ConcurrencyLimit:
    """An adaptive concurrency limit between 1 and ``maximum``.

    Args:
        maximum: The ceiling (``max_workers``).
        initial: The starting limit.
    """

    def __init__(self, maximum: int, initial: int = 2) -> None:
        self.maximum = maximum
        self.limit = max(1, min(maximum, initial))
        self._sum = 0.0
        self._count = 0
        self._min = math.inf
        self._fastest = math.inf  # the fastest attempt of the current window
        self._last = time.monotonic()
        self._updating = threading.Lock()

    def observe(self, latency: float) -> bool:
        """Record one attempt's duration; ``True`` when the limit was raised."""
        self._sum += latency
        self._count += 1
        fastest = self._fastest = min(self._fastest, latency)
        if fastest >= _SLOW_FIRST_S and self._min >= _SLOW_FIRST_S and self.limit < self.maximum:
            # Nothing fast seen yet, in this window or ever: a slow endpoint from the start
            # gets every worker with its first answer (a GIL wait never meets both tests).
            self.limit = self.maximum
            return True
        if self._count < 4 * self.limit or not self._updating.acquire(blocking=False):
            return False
        try:
            count = self._count
            if count <= 0:
                return False
            avg = self._sum / count
            fastest = self._fastest
            self._sum = 0.0
            self._count = 0
            self._fastest = math.inf
            old = self.limit
            if fastest >= _SLOW_S:  # every attempt of the window was slow: the endpoint is
                self.limit = self.maximum  # (too fast a flip is undone by the next window)
                return self.limit > old
            now = time.monotonic()
            self._min = min(self._min * (1.0 + _MIN_DECAY_PER_S * (now - self._last)), avg)
            self._last = now
            gradient = min(1.0, self._min / avg) if avg > 0 else 1.0
            # Flat latency: concurrency is free, double. Else shrink towards the gradient.
            new = old * 2.0 if gradient >= 0.95 else old * gradient + math.sqrt(old)
            self.limit = max(1, min(self.maximum, round(new)))
            return self.limit > old
        finally:
            self._updating.release()
