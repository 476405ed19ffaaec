"""The snapshot :meth:`HttpSinkConnector.stats` returns, beside the metrics it reads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from eventmesh_http_sink.metrics import HistogramSnapshot, UrlStats

__all__ = ["SinkStats"]


@attrs.frozen
class SinkStats:
    """A snapshot of a connector's counters (also readable as ``stats["name"]``).

    ``submitted == succeeded + failed + pending`` holds in every snapshot. The
    detail fields after ``scheduled_retries`` come from :mod:`.metrics`: a record
    is counted there in the same lock round as in the counters (as its slot is
    given back, after its callback), but they are read in a second round just
    after the counters, so they may include an outcome or a retry that the
    counters do not yet show.

    Attributes:
        per_url: URL -> :class:`UrlStats` (final outcomes by the URL of the last
            attempt, and retries by the URL that failed; a broadcast record counts
            once per URL here, once in the other fields).
        retries_by_cause: ``http_503``, ``ResponseError``... -> retries scheduled.
        failures_by_kind: The same labels -> records that finally failed.
        latency_p50: Median seconds from ``put`` to outcome (``None`` before any).
        latency_p95: 95th percentile, in seconds.
        latency_p99: 99th percentile, in seconds.
        latency: The bounded latency histogram behind the percentiles.
        breaker: Circuit-breaker state per URL (filled where the breaker exists).
    """

    submitted: int
    succeeded: int
    failed: int
    retried: int
    pending: int
    in_flight: int
    callback_errors: int
    scheduled_retries: int
    # Outcome features (zero when off): see outcomes/hooks.py and the README.
    waiting: int = 0
    rate_limit_waits: int = 0
    circuits_open: int = 0
    circuit_opened: int = 0
    circuit_waits: int = 0
    circuit_rejected: int = 0
    dead_lettered: int = 0
    dead_letter_errors: int = 0
    reconnects: int = 0  # requests resent on a fresh connection after a stale keep-alive one
    per_url: Mapping[str, UrlStats] = attrs.field(factory=dict)
    retries_by_cause: Mapping[str, int] = attrs.field(factory=dict)
    failures_by_kind: Mapping[str, int] = attrs.field(factory=dict)
    latency_p50: float | None = None
    latency_p95: float | None = None
    latency_p99: float | None = None
    latency: HistogramSnapshot = attrs.field(factory=HistogramSnapshot)
    breaker: Mapping[str, str] = attrs.field(factory=dict)  # URL -> circuit state

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dict (nested values as dicts too)."""
        return attrs.asdict(self)
