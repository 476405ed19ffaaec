"""Which URL an attempt goes to: round robin, failover with cool-down, broadcast.

A strategy answers :meth:`choose` before each attempt and hears the attempt's
outcome in :meth:`report`. Broadcast pins one copy of the record to each URL
(``unit.pin``) and :class:`BroadcastJoin` turns the copies' outcomes into the
record's single outcome.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from eventmesh_http_sink import forksafe
from eventmesh_http_sink.errors import BroadcastError, SinkClosedError, SinkError
from eventmesh_http_sink.redact import redact_url
from eventmesh_http_sink.results import SendResult

__all__ = ["BroadcastJoin", "Failover", "RoundRobin", "Strategy", "make_strategy"]


class Strategy(Protocol):
    """Chooses the URL of each attempt."""

    #: Whether :meth:`report` keeps state (``False``: the caller may skip it after a 2xx).
    reports: bool

    def choose(self, unit: Any, next_index: Callable[[], int]) -> str:
        """The URL of ``unit``'s next attempt (``unit.pin`` wins when set)."""

    def report(self, unit: Any, url: str, error: SinkError | None, retryable: bool) -> None:
        """Hear how the attempt on ``url`` went (``error`` is ``None`` on success)."""


class RoundRobin:
    """Each attempt goes to the next URL; the shared counter is lock-free."""

    reports = False

    def __init__(self, urls: tuple[str, ...]) -> None:
        self._urls = urls
        self._n = len(urls)

    def choose(self, unit: Any, next_index: Callable[[], int]) -> str:
        """See :class:`Strategy`."""
        pin: str | None = unit.pin
        if pin is not None:
            return pin
        return self._urls[0] if self._n == 1 else self._urls[next_index() % self._n]

    def report(self, unit: Any, url: str, error: SinkError | None, retryable: bool) -> None:
        """Round robin keeps no state per URL."""


class Failover:
    """Stay on the first healthy URL; a retryable failure moves the record on.

    A URL with ``threshold`` consecutive retryable failures is skipped for
    ``cooldown`` seconds, then tried again. When every URL is cooling down the
    record's own next URL is tried anyway: failing over must not stop delivery.
    """

    reports = True

    def __init__(self, urls: tuple[str, ...], threshold: int, cooldown: float) -> None:
        self._urls = urls
        self._index = {url: i for i, url in enumerate(urls)}
        self._threshold = threshold
        self._cooldown = cooldown
        self._fails = [0] * len(urls)
        self._until = [0.0] * len(urls)
        self._lock = threading.Lock()
        forksafe.register(self)

    def after_fork_in_child(self) -> None:
        """A parent thread may have held the lock at the fork: a fresh one for the child."""
        forksafe.reinit(self._lock)

    def choose(self, unit: Any, next_index: Callable[[], int]) -> str:
        """See :class:`Strategy`."""
        pin: str | None = unit.pin
        if pin is not None:
            return pin
        n = len(self._urls)
        start: int = unit.hop
        now = time.monotonic()
        until = self._until
        for i in range(n):
            idx = (start + i) % n
            if until[idx] <= now:
                return self._urls[idx]
        return self._urls[start % n]

    def report(self, unit: Any, url: str, error: SinkError | None, retryable: bool) -> None:
        """Count consecutive failures per URL; start a cool-down at the threshold."""
        idx = self._index.get(url)
        if idx is None:
            return
        with self._lock:
            if error is None:
                self._fails[idx] = 0
                return
            if not retryable:
                return  # the record is at fault, not the endpoint
            self._fails[idx] += 1
            if self._fails[idx] >= self._threshold:
                self._fails[idx] = 0
                self._until[idx] = time.monotonic() + self._cooldown
        unit.hop = idx + 1


def make_strategy(urls: tuple[str, ...], name: str, threshold: int, cooldown: float) -> Strategy:
    """The strategy for ``HttpSinkConfig.delivery_strategy`` (broadcast pins every unit)."""
    if name == "failover":
        return Failover(urls, threshold, cooldown)
    return RoundRobin(urls)


class BroadcastJoin:
    """Collects one record's per-URL outcomes; resolves the record after the last.

    Args:
        parent: The record's unit.
        urls: The URLs it is sent to.
        resolve: ``resolve(parent, outcome)``, the once-only resolver.
    """

    def __init__(
        self, parent: Any, urls: tuple[str, ...], resolve: Callable[[Any, SendResult | SinkError], Any]
    ) -> None:
        self._parent = parent
        self._urls = urls
        self._resolve = resolve
        # Not registered with forksafe: a join belongs to one record of the process that
        # accepted it, and a forked child never touches the parent's records.
        self._lock = threading.Lock()
        self._left = len(urls)
        self._status: dict[str, int | None] = {}
        self._errors: dict[str, SinkError] = {}
        self._attempts = 0

    def child_done(self, child: Any, outcome: SendResult | SinkError) -> None:
        """Called once per per-URL copy with that copy's outcome."""
        url: str = child.pin
        with self._lock:
            self._attempts = max(self._attempts, child.attempts)
            if isinstance(outcome, SendResult):
                self._status[url] = outcome.status
            else:
                self._status[url] = outcome.status
                self._errors[url] = outcome
            self._left -= 1
            if self._left:
                return
        parent = self._parent
        parent.attempts = self._attempts
        per_url = {url: self._status.get(url) for url in self._urls}
        result: SendResult | SinkError
        closed = [e for e in self._errors.values() if isinstance(e, SinkClosedError)]
        if closed:
            # close() cancelled a copy: the record was cancelled, whatever the other URLs did.
            result = SinkClosedError(
                f"connector closed before record {parent.record.record_id} reached every URL "
                f"(per URL: { {redact_url(u): s for u, s in per_url.items()} })"
            )
            result.__cause__ = closed[0]
        elif self._errors:
            result = BroadcastError({u: self._errors[u] for u in self._urls if u in self._errors}, per_url)
        else:
            rec = parent.record
            result = SendResult(
                rec.record_id,
                rec.topic,
                None,
                max(s or 0 for s in per_url.values()),
                self._attempts,
                time.monotonic() - parent.t0,
                b"",
                {u: s or 0 for u, s in per_url.items()},
            )
        self._resolve(parent, result)
