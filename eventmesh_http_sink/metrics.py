"""Counters and a bounded latency histogram behind :meth:`HttpSinkConnector.stats`.

Each resolved record and each scheduled retry is one short update under the
metrics' lock. The resolver keeps its ledger (``pending``, ``succeeded``...)
under that same lock and counts a record's outcome here in its own lock round
(:meth:`Metrics.count_outcome`, :meth:`Metrics.count_retry`): one lock round per
record instead of two, and the ledger and the metrics change together. Latency
goes into fixed log-spaced buckets (memory is constant whatever the traffic);
percentiles are read from the buckets, accurate to one bucket width (~19 %).
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs

from . import forksafe
from .errors import HttpStatusError

if TYPE_CHECKING:
    from _thread import LockType

__all__ = ["HistogramSnapshot", "LatencyHistogram", "Metrics", "UrlStats", "error_kind"]

# Bucket upper bounds in seconds: 100 µs * 2**(k/4), up to about 2 hours.
_BOUNDS: tuple[float, ...] = tuple(1e-4 * 2 ** (k / 4) for k in range(97))


def error_kind(error: BaseException) -> str:
    """A short, low-cardinality label for an error: ``http_503``, ``ResponseError``...

    Used for "failed by kind" and "retries by cause" (and as Prometheus labels).
    """
    if isinstance(error, HttpStatusError):
        return f"http_{error.status}"
    return type(error).__name__


@attrs.frozen
class HistogramSnapshot:
    """A copy of a latency histogram.

    Attributes:
        bounds: Bucket upper bounds in seconds (the last bucket, beyond them, is ``+Inf``).
        counts: Per-bucket counts (``len(bounds) + 1`` of them, not cumulative).
        count: Samples observed.
        sum: Total of the samples, in seconds.
    """

    bounds: tuple[float, ...] = _BOUNDS
    counts: tuple[int, ...] = (0,) * (len(_BOUNDS) + 1)
    count: int = 0
    sum: float = 0.0

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile (0 < q <= 1) as a bucket's upper bound, or ``None`` if empty."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return self.bounds[i] if i < len(self.bounds) else math.inf
        return math.inf  # pragma: no cover - counts always add up to count

    def cumulative(self, every: int = 4) -> list[tuple[float, int]]:
        """``(upper_bound, cumulative_count)`` pairs at every ``every``-th bound, ending with +Inf."""
        out: list[tuple[float, int]] = []
        seen = 0
        for i, n in enumerate(self.counts[:-1]):
            seen += n
            if i % every == 0:
                out.append((self.bounds[i], seen))
        out.append((math.inf, self.count))
        return out


class LatencyHistogram:
    """Fixed log-spaced buckets; not thread-safe on its own (:class:`Metrics` locks it)."""

    __slots__ = ("_counts", "_n", "_sum")

    def __init__(self) -> None:
        self._counts = [0] * (len(_BOUNDS) + 1)
        self._n = 0
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one sample."""
        self._counts[bisect.bisect_left(_BOUNDS, seconds)] += 1
        self._n += 1
        self._sum += seconds

    def snapshot(self) -> HistogramSnapshot:
        """A copy of the current state."""
        return HistogramSnapshot(_BOUNDS, tuple(self._counts), self._n, self._sum)


@attrs.frozen
class UrlStats:
    """Final outcomes and retries of the records whose last attempt went to one URL."""

    succeeded: int = 0
    failed: int = 0
    retried: int = 0

    def __getitem__(self, name: str) -> int:
        value: int = getattr(self, name)
        return value


class Metrics:
    """The detail counters of one connector runtime (per process).

    :meth:`outcome`, :meth:`retry` and :meth:`snapshot` take :attr:`lock`;
    :meth:`count_outcome`, :meth:`count_retry` and :meth:`snapshot_held` are for a caller that holds it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latency = LatencyHistogram()
        self._urls: dict[str, list[int]] = {}  # url -> [succeeded, failed, retried]
        self._retries: dict[str, int] = {}
        self._failures: dict[str, int] = {}
        forksafe.register(self)

    @property
    def lock(self) -> LockType:
        """The lock the counters change under (the resolver's ledger shares it)."""
        return self._lock

    def after_fork_in_child(self) -> None:
        """A parent thread may have held the lock at the fork: a fresh one for the child."""
        forksafe.reinit(self._lock)

    def outcome(
        self, url: str | None, elapsed: float, error: BaseException | None, copy: bool = False
    ) -> None:
        """Count a resolved unit (``error is None``: success).

        Args:
            url: The URL of the last attempt (``None``: never attempted, or a
                broadcast parent), counted in the per-URL rows.
            elapsed: Seconds from ``put`` to the outcome.
            error: The final error, ``None`` on success.
            copy: A per-URL copy of a broadcast record: counted for its URL only,
                the record itself is counted once, by its parent.
        """
        kind = None if error is None else error_kind(error)
        with self._lock:
            self.count_outcome(url, elapsed, kind, copy)

    def count_outcome(self, url: str | None, elapsed: float, kind: str | None, copy: bool = False) -> None:
        """:meth:`outcome` for a caller that holds :attr:`lock`, given the error's :func:`error_kind`."""
        if url is not None:
            row = self._urls.get(url)
            if row is None:
                row = self._urls[url] = [0, 0, 0]
            row[0 if kind is None else 1] += 1
        if not copy:
            self._latency.observe(elapsed)
            if kind is not None:
                self._failures[kind] = self._failures.get(kind, 0) + 1

    def retry(self, url: str | None, error: BaseException) -> None:
        """Count one scheduled retry and its cause."""
        kind = error_kind(error)
        with self._lock:
            self.count_retry(url, kind)

    def count_retry(self, url: str | None, kind: str) -> None:
        """:meth:`retry` for a caller that holds :attr:`lock`, given the error's :func:`error_kind`."""
        if url is not None:
            row = self._urls.get(url)
            if row is None:
                row = self._urls[url] = [0, 0, 0]
            row[2] += 1
        self._retries[kind] = self._retries.get(kind, 0) + 1

    def snapshot(
        self,
    ) -> tuple[Mapping[str, UrlStats], Mapping[str, int], Mapping[str, int], HistogramSnapshot]:
        """``(per_url, retries_by_cause, failures_by_kind, latency)``, fresh copies."""
        with self._lock:
            return self.snapshot_held()

    def snapshot_held(
        self,
    ) -> tuple[Mapping[str, UrlStats], Mapping[str, int], Mapping[str, int], HistogramSnapshot]:
        """:meth:`snapshot` for a caller that holds :attr:`lock` (and reads the ledger in the same round)."""
        per_url = {str(url): UrlStats(*row) for url, row in self._urls.items()}
        return per_url, dict(self._retries), dict(self._failures), self._latency.snapshot()
