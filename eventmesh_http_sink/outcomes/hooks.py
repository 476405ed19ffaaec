"""Where the optional outcome features plug into the connector.

The connector calls three narrow hooks, and this module fans them out to
the features the config turned on, so the connector itself knows none of them:

* :meth:`Hooks.gate` before an attempt: the rate limit, then the URL's
  circuit breaker. A record that must wait is told how long; the dispatcher
  puts it on a timer, never sleeping on a worker; it stays pending, so it
  counts against ``max_pending``. No wait outlasts ``RetryConfig.max_elapsed``:
  a record that would still wait then fails, so ``flush``/``close`` never hang.
* :meth:`Hooks.after_attempt` after every attempt: the result store and the
  circuit breaker.
* :meth:`Hooks.on_failure` once per record whose final outcome is a failure,
  before its callback: the dead-letter writer.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from eventmesh_http_sink.config import HttpSinkConfig
from eventmesh_http_sink.errors import CircuitOpenError, SinkClosedError, SinkError
from eventmesh_http_sink.outcomes.dead_letter import DeadLetterWriter, dead_letter_entry
from eventmesh_http_sink.outcomes.export_server import ExportServer
from eventmesh_http_sink.outcomes.result_store import ResultStore, serves_in_this_process
from eventmesh_http_sink.records import ConnectRecord
from eventmesh_http_sink.scheduling.breaker import CircuitBreaker
from eventmesh_http_sink.scheduling.ratelimit import TokenBucket
from eventmesh_http_sink.wire.transport import Response

__all__ = ["Hooks"]


class Hooks:
    """The per-runtime state of the optional features (rebuilt after a fork, like the pool).

    Args:
        config: The connector's config.
        store: The connector's result store (it outlives runtimes, so ``export`` works after close).
    """

    def __init__(self, config: HttpSinkConfig, store: ResultStore | None) -> None:
        self.store = store
        self.bucket = None if config.rate_limit is None else TokenBucket(config.rate_limit)
        self.breaker = None if config.circuit_breaker is None else CircuitBreaker(config.circuit_breaker)
        self.dead_letter = None if config.dead_letter is None else DeadLetterWriter(config.dead_letter)
        self.dead_letter_on_close = config.dead_letter_on_close
        self.max_elapsed = config.retry.max_elapsed
        # Only round robin may send a record elsewhere: broadcast copies are pinned to
        # their URL, and failover keeps its own order.
        self.reroute = config.delivery_strategy == "round_robin"
        self.active = bool(self.bucket or self.breaker)
        #: Whether :meth:`after_attempt` does anything (a breaker or a result store).
        self.watches_attempts = self.breaker is not None or store is not None
        self._lock = threading.Lock()
        self._reserved: set[Any] = set()  # records holding a rate-limit token they waited for
        self.rate_waits = 0
        self.server: ExportServer | None = None
        rs = config.result_store
        if store is not None and rs is not None and serves_in_this_process(rs):
            self.server = ExportServer(store, rs)

    def gate(self, future: Any, url: str, urls: tuple[str, ...]) -> str | SinkError | float:
        """Before an attempt to ``url`` (chosen from ``urls``).

        Returns:
            The URL to send to now (``url``, or the next one whose circuit is not
            open); a float: the seconds the record must wait on a timer before
            asking again; or the error to fail it with.
        """
        if self.bucket is not None:
            with self._lock:
                holding = future in self._reserved
                self._reserved.discard(future)
            if not holding:
                budget = self.max_elapsed - (time.monotonic() - future.t0)
                wait = self.bucket.reserve(max_wait=budget)
                if wait is None:
                    # The retry budget bounds a rate-limit wait too, so close() cannot hang on it.
                    return SinkError(
                        f"rate limit: no token for record {future.record.record_id} within the retry"
                        f" budget (max_elapsed={self.max_elapsed}s)",
                        url=url,
                    )
                if wait > 0:
                    with self._lock:
                        self._reserved.add(future)
                        self.rate_waits += 1
                    return wait
        if self.breaker is None:
            return url
        return self._circuit_gate(future, url, urls)

    def _circuit_gate(self, future: Any, url: str, urls: tuple[str, ...]) -> str | SinkError | float:
        assert self.breaker is not None  # noqa: S101 - only called with a breaker
        verdict = self.breaker.before(url)
        if verdict is None:
            return url
        other = self._other_url(url, urls) if self.reroute and len(urls) > 1 else None
        if other is not None:
            return other
        if isinstance(verdict, CircuitOpenError):
            return verdict
        # The retry budget bounds waiting on a circuit too, so close() cannot hang on it.
        if time.monotonic() + verdict - future.t0 >= self.max_elapsed:
            return CircuitOpenError(
                f"circuit for {url} still open at the end of the retry budget"
                f" (max_elapsed={self.max_elapsed}s)",
                url=url,
            )
        return verdict

    def _other_url(self, url: str, urls: tuple[str, ...]) -> str | None:
        # Round the open circuit: the next URL (in order) that takes requests.
        assert self.breaker is not None  # noqa: S101 - only called with a breaker
        start = urls.index(url)
        for other in urls[start + 1 :] + urls[:start]:
            if self.breaker.before(other, count=False) is None:
                return other
        return None

    def after_attempt(
        self,
        record: ConnectRecord,
        attempts: int,
        url: str,
        response: Response | None,
        error: SinkError | None,
    ) -> None:
        """Account for one attempt (``response`` on 2xx, ``error`` otherwise)."""
        if self.breaker is not None:
            self.breaker.record(url, error)
        store = self.store
        if store is None:
            return
        if response is not None:
            status: int | None = response.status
            message = response.reason or "OK"
            body: bytes | None = response.body
        elif error is not None and error.status is not None:  # HttpStatusError, BusinessError
            status, message, body = error.status, str(error), getattr(error, "body", None)
        else:
            status, message, body = None, f"{type(error).__name__}: {error}", None
        store.add_attempt(
            url=url,
            record_id=record.record_id,
            retry_num=attempts - 1,
            status=status,
            message=message,
            body=body,
        )

    def on_failure(self, future: Any, error: SinkError) -> None:
        """A record finally failed: write its dead letter (never raises)."""
        writer = self.dead_letter
        if writer is None or (isinstance(error, SinkClosedError) and not self.dead_letter_on_close):
            return
        if future.join is not None:
            return  # a broadcast copy: the record's own outcome is written once, by its join
        writer.write(
            lambda: dead_letter_entry(future.record, error, future.attempts), future.record.record_id
        )

    def stats(self) -> dict[str, int]:
        """The features' counters, as extra :class:`SinkStats` fields."""
        out = {"rate_limit_waits": self.rate_waits}
        if self.breaker is not None:
            out["circuits_open"] = self.breaker.open_count()
            out["circuit_opened"] = self.breaker.opened
            out["circuit_waits"] = self.breaker.waits
            out["circuit_rejected"] = self.breaker.rejected
        if self.dead_letter is not None:
            out["dead_lettered"] = self.dead_letter.written
            out["dead_letter_errors"] = self.dead_letter.errors
        return out

    def close(self) -> None:
        """Stop the export server and fsync the dead-letter file."""
        with self._lock:
            self._reserved.clear()  # close() resolved the records still holding tokens
        if self.server is not None:
            self.server.close()
        if self.dead_letter is not None:
            self.dead_letter.close()
