"""A circuit breaker per URL: stop hammering an endpoint that keeps failing.

After ``failure_threshold`` consecutive failed attempts to a URL its circuit
*opens*: records for it wait (or, with ``when_open="fail"``, fail at once with
:class:`CircuitOpenError`). After ``reset_timeout`` seconds the circuit is
*half-open*: one probe request goes through, and its outcome closes the
circuit or opens it again for another ``reset_timeout``.

A failed attempt is one with no usable response (connection refused, reset,
timeout, garbage) or a 5xx, 408 or 429 status. Other 4xx answers mean the
endpoint is up and disliked the request, so they count as successes here.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import ClassVar, Literal

import attrs

from eventmesh_http_sink import forksafe
from eventmesh_http_sink._validators import known_options, one_of, positive, positive_int
from eventmesh_http_sink.errors import CircuitOpenError, HttpStatusError, SinkError

__all__ = ["CircuitBreaker", "CircuitBreakerConfig", "is_endpoint_failure"]

_log = logging.getLogger("eventmesh_http_sink")
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# How often a record waiting behind a half-open probe looks again: a tenth of
# reset_timeout within these bounds, jittered so a backlog does not come back at once.
_PROBE_POLL_MIN, _PROBE_POLL_MAX = 0.05, 1.0


@known_options
@attrs.frozen
class CircuitBreakerConfig:
    """When a URL's circuit opens and what records do meanwhile.

    Args:
        failure_threshold: Consecutive failed attempts to one URL that open its circuit.
        reset_timeout: Seconds the circuit stays open before one probe is let through.
        when_open: ``"wait"``: records wait (still counting against ``max_pending``,
            holding no worker) until the circuit closes; ``"fail"``: they fail at once
            with :class:`CircuitOpenError`.
    """

    _config_prefix: ClassVar[str] = "circuit_breaker"  # ConfigError names "circuit_breaker.<field>"

    failure_threshold: int = attrs.field(default=20, validator=positive_int)
    reset_timeout: float = attrs.field(default=10.0, validator=positive)
    when_open: Literal["wait", "fail"] = attrs.field(default="wait", validator=one_of("wait", "fail"))


def is_endpoint_failure(error: SinkError | None) -> bool:
    """Whether an attempt's outcome counts against the endpoint's health."""
    if error is None:
        return False
    if isinstance(error, HttpStatusError):
        return error.status >= 500 or error.status in (408, 429)
    return True


@attrs.define
class _Circuit:
    state: str = CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False


class CircuitBreaker:
    """The circuits of a connector's URLs, thread-safe."""

    def __init__(self, config: CircuitBreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}
        self._lock = threading.Lock()
        self.opened = 0  # times a circuit opened
        self.rejected = 0  # records failed with CircuitOpenError
        self.waits = 0  # times a record was held back by an open circuit
        forksafe.register(self)

    def after_fork_in_child(self) -> None:
        """A parent thread may have held the lock at the fork: a fresh one for the child."""
        forksafe.reinit(self._lock)

    def before(self, url: str, count: bool = True) -> float | CircuitOpenError | None:
        """Decide about an attempt to ``url``.

        Args:
            url: The URL.
            count: Count a refusal in the stats (``False`` when only looking for
                another URL to send to).

        Returns:
            ``None``: send now (possibly as the half-open probe); a float: wait that
            many seconds and ask again; a :class:`CircuitOpenError`: fail the record.
        """
        with self._lock:
            circuit = self._circuits.get(url)
            if circuit is None or circuit.state == CLOSED:
                return None
            now = self._clock()
            if circuit.state == OPEN:
                remaining = circuit.opened_at + self.config.reset_timeout - now
                if remaining <= 0:
                    circuit.state = HALF_OPEN
                    circuit.probing = True
                    _log.info("circuit for %s half-open: sending one probe", url)
                    return None
                wait = remaining
            else:  # half-open, the probe is out
                poll = min(max(self.config.reset_timeout / 10, _PROBE_POLL_MIN), _PROBE_POLL_MAX)
                wait = poll * (1 + random.random())  # noqa: S311 - jitter, not security
            if self.config.when_open == "fail":
                self.rejected += count
                return CircuitOpenError(f"circuit for {url} is {circuit.state}; record not sent", url=url)
            self.waits += count
            return wait

    def record(self, url: str, error: SinkError | None) -> None:
        """Account for the outcome of an attempt to ``url``."""
        failed = is_endpoint_failure(error)
        with self._lock:
            circuit = self._circuits.get(url)
            if circuit is None:
                if not failed:
                    return  # the common case stays allocation-free
                circuit = self._circuits[url] = _Circuit()
            if circuit.state == HALF_OPEN:
                circuit.probing = False
                if failed:
                    self._open(url, circuit, "the probe failed")
                else:
                    circuit.state = CLOSED
                    circuit.failures = 0
                    _log.warning("circuit for %s closed: the probe succeeded", url)
            elif circuit.state == CLOSED:
                if not failed:
                    circuit.failures = 0
                    return
                circuit.failures += 1
                if circuit.failures >= self.config.failure_threshold:
                    self._open(url, circuit, f"{circuit.failures} consecutive failures")
            # OPEN: late answers of attempts sent before it opened change nothing.

    def _open(self, url: str, circuit: _Circuit, why: str) -> None:
        circuit.state = OPEN
        circuit.opened_at = self._clock()
        self.opened += 1
        _log.warning("circuit for %s opened (%s); next probe in %.3gs", url, why, self.config.reset_timeout)

    def states(self) -> dict[str, str]:
        """Each URL's circuit state (URLs never failed are closed and not listed)."""
        with self._lock:
            return {url: c.state for url, c in self._circuits.items()}

    def open_count(self) -> int:
        """Circuits currently open or half-open."""
        with self._lock:
            return sum(1 for c in self._circuits.values() if c.state != CLOSED)
