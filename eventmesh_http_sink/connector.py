"""The connector: bounded intake, a thread pool that sends, and exactly one outcome per record.

Threads (see the README's picture):

* The caller's thread validates and encodes the record, reserves one of
  ``max_pending`` slots (blocking or raising per ``when_full``) and submits it.
* A worker thread makes one attempt over the transport. Success or a final
  failure resolves the record's Future; a retryable failure goes to the
  :class:`RetryScheduler`, which resubmits it after the backoff without
  holding a worker.
* The Future's first done-callback runs in the thread that resolved it, in the
  caller's ``contextvars`` context as of ``put``: it calls ``on_success`` or
  ``on_exception``, isolates exceptions they raise, and releases the slot.

Every resolution goes through :meth:`HttpSinkConnector._resolve`, which
claims the record under the lock first, so a worker finishing late and
``close`` cancelling at its deadline can never both report an outcome.
"""

from __future__ import annotations

import collections
import contextvars
import itertools
import logging
import os
import sys
import threading
import time
import typing
import weakref
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeGuard

import attrs

from .config import HttpSinkConfig
from .dispatch.batching import Batcher
from .dispatch.concurrency import ConcurrencyLimit
from .dispatch.delivery import DeliveryMixin
from .dispatch.strategies import make_strategy
from .errors import (
    ConfigError,
    InvalidRecordError,
    QueueFullError,
    RecordEncodingError,
    SinkClosedError,
    SinkError,
)
from .metrics import HistogramSnapshot, Metrics, UrlStats
from .outcomes.failure_log import FailureLog
from .outcomes.hooks import Hooks
from .outcomes.result_store import ResultStore
from .records import ConnectRecord, encode_data, encode_extensions
from .results import SendExceptionContext, SendResult
from .scheduling.retry import RetryPolicy, RetryScheduler
from .tracing import attempt_tracer
from .wire.headers import base_headers
from .wire.request_options import RequestOptions, status_error
from .wire.transport import RequestsTransport, Transport, Urllib3Transport, reset_session_pools_after_fork

if TYPE_CHECKING:
    import requests

__all__ = ["HttpSinkConnector", "SinkStats"]

_log = logging.getLogger("eventmesh_http_sink")
_NEW, _OPEN, _CLOSED = "new", "open", "closed"

# Flags the thread while it runs a record's callbacks, so flush() can refuse to
# wait for itself.
_in_callback = threading.local()


class _RecordFuture(Future[SendResult]):
    """The Future handed to the caller, also carrying what the workers need.

    One object per record instead of a Future plus a side record keeps the
    hot path to a single allocation of our own.
    """

    _pin: str | None = None  # broadcast: the one URL this copy goes to
    _hop = 0  # failover: the index of the URL to try first
    _item = b""  # batching: the record's element of a batch body

    def __init__(
        self, record: ConnectRecord, body: bytes, headers: dict[str, str], context: contextvars.Context
    ) -> None:
        super().__init__()
        self._rec = record
        self._body = body
        self._hdrs = headers
        self._ctx = context
        self._t0 = 0.0
        self._attempts = 0
        self._url: str | None = None
        self._waits: Any = None
        self._elapsed = 0.0


@attrs.frozen
class SinkStats:
    """A snapshot of a connector's counters (also readable as ``stats["name"]``).

    ``submitted == succeeded + failed + pending`` holds in every snapshot. The
    detail fields after ``scheduled_retries`` come from :mod:`.metrics`, read
    just after the counters, so they may lag them by an outcome in progress.

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
    # Outcome features (zero when off): see hooks.py and the README.
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


class _Runtime:
    """Everything that belongs to one process: rebuilt lazily after a fork."""

    def __init__(self, connector: HttpSinkConnector, transport: Transport) -> None:
        cfg = connector.config
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.not_full = threading.Condition(self.lock)
        self.idle = threading.Condition(self.lock)
        self.live: set[_RecordFuture] = set()  # accepted and not yet resolved
        self.pending = 0  # accepted and not yet finished (callback included)
        self.submitted = self.succeeded = self.failed = self.retried = 0
        self.callback_errors = 0
        self.transport = transport
        self.hooks = Hooks(cfg, connector._store, connector._resubmit)
        self.executor = ThreadPoolExecutor(cfg.max_workers, thread_name_prefix="eventmesh-http-sink")
        self.scheduler: RetryScheduler[_RecordFuture] = RetryScheduler(connector._resubmit)
        self.next_index = itertools.count().__next__  # atomic under the GIL: lock-free round robin
        # Records wait here for a worker loop (_work): no per-record executor
        # task or second Future. deque append/popleft are atomic under the GIL.
        self.queue: collections.deque[_RecordFuture] = collections.deque()
        self.workers = 0  # worker loops running (under lock), at most limit.limit
        self.limit = ConcurrencyLimit(cfg.max_workers)
        self.sending: set[_RecordFuture] = set()  # in flight; set add/discard are atomic
        self.batcher = Batcher(cfg.batch, connector._send_batch) if cfg.batch is not None else None
        self.metrics = Metrics()
        self.failures = FailureLog(_log)


# Every connector, weakly: for the fork hook and the interpreter-exit hook.
_CONNECTORS: weakref.WeakSet[HttpSinkConnector] = weakref.WeakSet()
# Runtimes inherited through fork() are kept, never collected: collecting one
# would run its executor's weakref callback on a queue whose lock another
# thread of the parent may have held at the fork.
_INHERITED: list[_Runtime] = []


class HttpSinkConnector(DeliveryMixin):
    """Delivers :class:`ConnectRecord` objects to HTTP endpoints from synchronous code.

    ``put`` returns a :class:`concurrent.futures.Future` at once; a bounded
    thread pool sends the request; the record's callback is told the outcome,
    exactly once. Use it as a context manager, or call :meth:`start` and
    :meth:`close`::

        with HttpSinkConnector(HttpSinkConfig("https://example.com/hook")) as sink:
            future = sink.put(ConnectRecord({"id": 1}, callback=my_callback))

    Args:
        config: The :class:`HttpSinkConfig`.
        transport: ``None`` for the default urllib3 pool, a ``requests.Session``
            to send through it, or any object implementing :class:`Transport`.
    """

    def __init__(
        self, config: HttpSinkConfig, *, transport: Transport | requests.Session | None = None
    ) -> None:
        if not isinstance(config, HttpSinkConfig):
            raise ConfigError("config", f"must be an HttpSinkConfig, got {type(config).__name__}")
        self.config = config
        self._transport_arg = transport
        self._policy = RetryPolicy(config.retry)
        self._urls = config.urls
        self._method = config.method
        self._max_body = config.max_body_bytes
        self._base_headers = base_headers(config)
        self._strategy = make_strategy(
            config.urls, config.delivery_strategy, config.failover_threshold, config.failover_cooldown
        )
        self._opts = RequestOptions(config)
        self._tracer = attempt_tracer(config)  # None unless tracing=True (tracing.py)
        self._state = _NEW
        self._state_lock = threading.Lock()
        self._rt: _Runtime | None = None
        rs = config.result_store
        self._store = None if rs is None else ResultStore(rs.max_size)
        _CONNECTORS.add(self)

    def __repr__(self) -> str:
        return f"<HttpSinkConnector {self._state} urls={list(self._urls)!r}>"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> HttpSinkConnector:
        """Create the thread pool and connection pools. ``put`` calls it lazily.

        Raises:
            SinkClosedError: the connector was closed.
        """
        self._runtime()
        return self

    def _runtime(self) -> _Runtime:
        with self._state_lock:
            if self._state == _CLOSED:
                raise SinkClosedError("the connector is closed")
            rt = self._rt
            if rt is None or rt.pid != os.getpid():
                rt = self._rt = _Runtime(self, self._new_transport())
                self._state = _OPEN
            return rt

    def _new_transport(self) -> Transport:
        arg = self._transport_arg
        if arg is None:
            return Urllib3Transport(self.config)
        if _is_requests_session(arg):
            return RequestsTransport(arg, self.config)
        return arg  # type: ignore[return-value]

    def __enter__(self) -> HttpSinkConnector:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._state == _CLOSED

    # -- intake ------------------------------------------------------------------------------

    def put(self, record: ConnectRecord) -> Future[SendResult]:
        """Accept one record for delivery and return its Future at once.

        The Future's result is a :class:`SendResult`; on failure it raises the
        same :class:`SinkError` that the callback's context carries.

        Raises:
            InvalidRecordError: the record cannot be sent (too large, bad extensions);
                :class:`RecordEncodingError` (also a ``TypeError``) for unsupported data.
            QueueFullError: ``max_pending`` reached and ``when_full="raise"``, or
                ``put_timeout`` passed while blocked.
            SinkClosedError: the connector is closed.
        """
        future = self._prepare(record)
        self._submit(future)
        return future

    def put_all(self, records: Iterable[ConnectRecord]) -> list[Future[SendResult]]:
        """Accept several records (EventMesh's ``put(List<ConnectRecord>)``).

        Every record is validated and encoded before any is queued, so a bad
        record refuses the whole call. If the queue fills up (``when_full="raise"``
        or ``put_timeout``), the :class:`QueueFullError` carries the Futures of the
        records already accepted as ``accepted``.
        """
        prepared = [self._prepare(record) for record in records]
        accepted: list[Future[SendResult]] = []
        for future in prepared:
            try:
                self._submit(future)
            except (QueueFullError, SinkClosedError) as exc:
                exc.accepted = accepted
                raise
            accepted.append(future)
        return accepted

    def _prepare(self, record: ConnectRecord) -> _RecordFuture:
        if not isinstance(record, ConnectRecord):
            raise RecordEncodingError(None, f"put() takes a ConnectRecord, got {type(record).__name__}")
        body, content_type = encode_data(record)
        if len(body) > self._max_body:
            raise InvalidRecordError(
                record.record_id, f"body of {len(body)} bytes exceeds max_body_bytes ({self._max_body})"
            )
        headers = self._base_headers.copy()
        headers.setdefault("Content-Type", content_type)  # a configured Content-Type wins
        headers["Idempotency-Key"] = record.record_id
        extension = encode_extensions(record)
        if extension is not None:
            headers["extension"] = extension
        item = b""
        if self._opts.active:
            body, item = self._opts.prepare(record, body, headers)
        future = _RecordFuture(record, body, headers, contextvars.copy_context())
        future._item = item
        # Our futures never enter CANCELLED: a record that is not delivered is
        # reported through on_exception(SinkClosedError), like any failure.
        future.set_running_or_notify_cancel()
        future.add_done_callback(self._on_done)
        return future

    def _submit(self, future: _RecordFuture) -> None:
        rt = self._rt
        if rt is None or rt.pid != os.getpid():
            rt = self._runtime()
        cfg = self.config
        future._t0 = time.monotonic()
        with rt.lock:
            if rt.pending >= cfg.max_pending:
                self._wait_for_room(rt, cfg)
            if self._state == _CLOSED:
                raise SinkClosedError("the connector is closed")
            rt.pending += 1
            rt.submitted += 1
            rt.live.add(future)
        self._dispatch(rt, future)  # never raises: a closed executor resolves the record

    def _wait_for_room(self, rt: _Runtime, cfg: HttpSinkConfig) -> None:
        # Called with rt.lock held.
        if cfg.when_full == "raise":
            raise QueueFullError(f"max_pending ({cfg.max_pending}) records are pending")
        deadline = None if cfg.put_timeout is None else time.monotonic() + cfg.put_timeout
        while rt.pending >= cfg.max_pending and self._state != _CLOSED:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise QueueFullError(
                    f"max_pending ({cfg.max_pending}) records still pending after put_timeout"
                    f" ({cfg.put_timeout}s)"
                )
            rt.not_full.wait(remaining)

    def _enqueue(self, rt: _Runtime, future: _RecordFuture) -> None:
        """Queue one record for a worker loop, starting a loop if the limit allows."""
        with rt.lock:
            rt.queue.append(future)
            spawn = rt.workers < rt.limit.limit
            if spawn:
                rt.workers += 1
        if spawn:
            self._spawn(rt)

    def _spawn(self, rt: _Runtime) -> None:
        # Called after reserving a worker slot (rt.workers += 1 under the lock).
        try:
            rt.executor.submit(self._work, rt)
        except RuntimeError as exc:  # close() shut the executor: nothing queued will be sent
            with rt.lock:
                rt.workers -= 1
            while rt.queue:
                future = rt.queue.popleft()
                self._resolve(future, _closed_error(future, exc))

    # -- sending (worker threads) ------------------------------------------------------------

    def _work(self, rt: _Runtime) -> None:
        """A worker loop: send queued records until none is left or the limit shrank."""
        queue = rt.queue
        limit = rt.limit
        attempt = self._attempt
        while True:
            try:
                future = queue.popleft()
            except IndexError:
                with rt.lock:  # _enqueue appends under this lock: no record is stranded
                    if queue:
                        continue
                    rt.workers -= 1
                    return
            started = time.monotonic()
            ok = False
            try:
                ok = attempt(future)
            except Exception as exc:  # a bug must neither kill the loop nor lose the record
                _log.exception("sending record %s failed unexpectedly", future._rec.record_id)
                error = SinkError(f"unexpected {type(exc).__name__}: {exc}", url=future._url)
                error.__cause__ = exc
                rt.sending.discard(future)
                self._resolve(future, error)
            # Fast failures (refused connections, skipped records) say nothing
            # about the endpoint's latency: they would drag the minimum down.
            if ok and limit.observe(time.monotonic() - started):
                while queue and rt.workers < limit.limit:  # the limit grew: more loops
                    with rt.lock:
                        if rt.workers >= limit.limit:
                            break
                        rt.workers += 1
                    self._spawn(rt)
            elif rt.workers > limit.limit:
                with rt.lock:
                    if rt.workers > limit.limit:
                        rt.workers -= 1
                        return

    def _attempt(self, future: _RecordFuture) -> bool:
        """One attempt; ``True`` when it got a 2xx (only those latencies feed the limit)."""
        rt = self._rt
        if rt is None or future.done():
            return False  # cancelled at close while queued
        url = self._strategy.choose(future, rt.next_index)
        if rt.hooks.active:
            verdict = rt.hooks.gate(future, url, self._urls)
            if verdict is None:
                return False  # waiting on a timer for a rate-limit token or a closed circuit
            if isinstance(verdict, SinkError):
                self._resolve(future, verdict)
                return False
            url = verdict  # round robin: another URL when this one's circuit is open
        future._url = url
        future._attempts += 1
        rt.sending.add(future)
        headers, signer = future._hdrs, self.config.signing
        if signer is not None:  # Standard Webhooks: signed per attempt over the bytes sent (signing.py)
            headers = signer.sign_headers(headers, future._rec.record_id, future._body, time.time())
        span = None
        if self._tracer is not None:  # tracing: this attempt's span, its traceparent in the headers
            span, headers = self._tracer.start(url, headers, future._ctx, future._attempts)
        try:
            if self._opts.passthrough:
                response = rt.transport.send(self._method, url, future._body, headers)
            else:
                response = self._opts.send(rt.transport, self._method, url, future._body, headers)
        except SinkError as exc:
            error = exc
        except Exception as exc:  # a transport bug must not lose the record's outcome
            error = SinkError(f"unexpected {type(exc).__name__} sending to {url}: {exc}", url=url)
            error.__cause__ = exc
        else:
            status = response.status
            if 200 <= status < 300:
                if span is not None:  # tracing
                    span.end(status)
                result = SendResult(
                    future._rec.record_id,
                    future._rec.topic,
                    url,
                    status,
                    future._attempts,
                    time.monotonic() - future._t0,
                    response.body,
                )
                rt.hooks.after_attempt(future._rec, future._attempts, url, response, None)
                rt.sending.discard(future)
                self._strategy.report(future, url, None, False)
                self._resolve(future, result)
                return True
            error = status_error(response, url)
        if span is not None:  # tracing
            span.end(error.status, error)
        rt.hooks.after_attempt(future._rec, future._attempts, url, None, error)
        rt.sending.discard(future)
        self._strategy.report(future, url, error, self._policy.is_retryable(error))
        self._retry_or_fail(rt, future, error)
        return False

    def _retry_or_fail(self, rt: _Runtime, future: _RecordFuture, error: SinkError) -> None:
        if future._waits is None:
            future._waits = self._policy.new_waits()
        elapsed = time.monotonic() - future._t0
        wait = self._policy.next_wait(error, future._attempts, elapsed, future._waits)
        if wait is not None and not future.done() and rt.scheduler.schedule(wait, future):
            with rt.lock:
                rt.retried += 1
            rt.metrics.retry(future._url, error)
            _log.debug(
                "record %s: attempt %d failed (%s); retrying in %.3fs",
                future._rec.record_id,
                future._attempts,
                error,
                wait,
            )
            return
        self._resolve(future, error)

    def _resubmit(self, future: _RecordFuture) -> None:
        # Runs on the scheduler thread when a backoff is over.
        if future.done():
            return
        rt = self._rt
        if rt is None:
            self._resolve(future, _closed_error(future, RuntimeError("no runtime")))
            return
        self._send_unit(rt, future)  # to a worker, or back into its URL's batch

    # -- outcomes ----------------------------------------------------------------------------

    def _resolve(self, future: _RecordFuture, outcome: SendResult | SinkError) -> bool:
        """Resolve a record once; later calls for the same record do nothing."""
        rt = self._rt
        if rt is None:
            return False
        with rt.lock:
            if future not in rt.live:
                return False
            rt.live.remove(future)
        future._elapsed = time.monotonic() - future._t0
        rt.metrics.outcome(
            future._url,
            future._elapsed,
            None if isinstance(outcome, SendResult) else outcome,
            getattr(future, "_pin", None) is not None,  # a broadcast copy: its parent counts the record
        )
        if isinstance(outcome, SendResult):
            future._ctx.run(future.set_result, outcome)
        else:
            if outcome.url is None:
                outcome.url = future._url
            if not isinstance(outcome, SinkClosedError):
                rt.failures.failed(future._rec.record_id, future._attempts, outcome)  # summarised per kind
            rt.hooks.on_failure(future, outcome)  # the dead letter is written before the callback runs
            future._ctx.run(future.set_exception, outcome)
        return True

    def _on_done(self, future: Future[SendResult]) -> None:
        # The first done-callback of every record; runs in the caller's context.
        future = typing.cast(_RecordFuture, future)
        rt = self._rt
        record = future._rec
        callback = record.callback
        error = future.exception()
        callback_failed = False
        if callback is not None:
            _in_callback.active = True
            try:
                if error is None:
                    callback.on_success(future.result())
                else:
                    error = typing.cast(SinkError, error)
                    callback.on_exception(
                        SendExceptionContext(
                            record.record_id,
                            record.topic,
                            future._url,
                            error,
                            future._attempts,
                            future._elapsed,
                            error.status,
                        )
                    )
            except Exception:
                callback_failed = True
                _log.exception("callback of record %s raised; the connector goes on", record.record_id)
            finally:
                _in_callback.active = False
        if rt is not None:
            with rt.lock:
                rt.pending -= 1
                if error is None:
                    rt.succeeded += 1
                else:
                    rt.failed += 1
                if callback_failed:
                    rt.callback_errors += 1
                rt.not_full.notify()
                if rt.pending == 0:
                    rt.idle.notify_all()

    # -- waiting and closing -----------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record accepted so far has finished, its callback included.

        Returns:
            ``True`` if nothing is pending, ``False`` if ``timeout`` passed first.

        Raises:
            RuntimeError: when called from inside a record's callback, where it
                would wait for itself.
        """
        if getattr(_in_callback, "active", False):
            raise RuntimeError("flush() or close() called from a record callback would wait for itself")
        rt = self._rt
        if rt is None or rt.pid != os.getpid():
            return True
        self._drain_batches(rt)
        deadline = None if timeout is None else time.monotonic() + timeout
        with rt.lock:
            while rt.pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                rt.idle.wait(remaining)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Stop intake, wait for pending records, cancel what is left at the deadline.

        Later ``put`` calls raise :class:`SinkClosedError`. Records that have not
        finished within ``timeout`` seconds (``None``: wait for all, which the
        retry budget bounds) are reported through ``on_exception`` with a
        :class:`SinkClosedError`. Closing twice is harmless.

        Raises:
            RuntimeError: when called from inside a record's callback.
        """
        if getattr(_in_callback, "active", False):
            raise RuntimeError("close() called from a record callback would wait for itself")
        with self._state_lock:
            if self._state == _CLOSED:
                return
            self._state = _CLOSED
            rt = self._rt
        if rt is None or rt.pid != os.getpid():
            return
        with rt.lock:
            rt.not_full.notify_all()  # blocked put() calls now raise SinkClosedError
        self.flush(timeout)
        with rt.lock:
            leftovers = list(rt.live)
        for future in leftovers:
            self._resolve(future, _closed_error(future))
        rt.scheduler.stop()
        if rt.batcher is not None:
            rt.batcher.stop()  # its records were among the leftovers
        rt.hooks.close()
        rt.failures.close()  # the last summary line
        if leftovers:
            # Requests still on the wire: shut their sockets so workers return now.
            rt.transport.abort()
            rt.executor.shutdown(wait=False, cancel_futures=True)
        else:
            rt.executor.shutdown(wait=True)
        rt.transport.close()

    # -- observability -----------------------------------------------------------------------

    def stats(self) -> SinkStats:
        """A consistent snapshot of the counters (zeros before the first ``put``)."""
        rt = self._rt
        if rt is None or rt.pid != os.getpid():
            return SinkStats(0, 0, 0, 0, 0, 0, 0, 0)
        with rt.lock:
            counters = (
                rt.submitted,
                rt.succeeded,
                rt.failed,
                rt.retried,
                rt.pending,
                len(rt.sending),
                rt.callback_errors,
                len(rt.scheduler),
            )
            extra = rt.hooks.stats()
        per_url, retries, failures, latency = rt.metrics.snapshot()
        breaker = rt.hooks.breaker
        return SinkStats(
            *counters,
            **extra,
            per_url=per_url,
            retries_by_cause=retries,
            failures_by_kind=failures,
            latency_p50=latency.percentile(0.50),
            latency_p95=latency.percentile(0.95),
            latency_p99=latency.percentile(0.99),
            latency=latency,
            breaker=breaker.states() if breaker is not None else {},
            reconnects=getattr(rt.transport, "reconnects", 0),  # a custom transport may not count them
        )

    def export(
        self, page_num: int = 1, page_size: int = 10, mode: typing.Literal["peek", "poll"] = "peek"
    ) -> dict[str, Any]:
        """A page of the result store (EventMesh's webhook export); needs ``result_store``.

        ``peek`` returns entries ``(page_num - 1) * page_size`` onwards and keeps
        them; ``poll`` removes and returns the oldest ``page_size`` entries.

        Returns:
            ``{"pageNum", "pageSize" (items returned), "pageItems": [...]}``.

        Raises:
            RuntimeError: the config has no ``result_store``.
            ValueError: a parameter is out of range.
        """
        if self._store is None:
            raise RuntimeError("export() needs HttpSinkConfig(result_store=ResultStoreConfig(...))")
        return self._store.export(page_num, page_size, mode)

    @property
    def export_url(self) -> str | None:
        """The URL of the running export endpoint, or ``None`` (not configured, not started, closed)."""
        rt = self._rt
        if rt is None or self._state != _OPEN or rt.hooks.server is None:
            return None
        return rt.hooks.server.url


def _closed_error(future: _RecordFuture, cause: BaseException | None = None) -> SinkClosedError:
    attempts = future._attempts
    detail = "before its first attempt" if attempts == 0 else f"after {attempts} attempt(s); outcome unknown"
    err = SinkClosedError(
        f"connector closed before record {future._rec.record_id} finished ({detail})", url=future._url
    )
    err.__cause__ = cause
    return err


def _is_requests_session(obj: object) -> TypeGuard[requests.Session]:
    try:
        import requests
    except ImportError:
        return False
    return isinstance(obj, requests.Session)


def _after_fork_in_child() -> None:
    # The child starts with no threads: give every connector a fresh runtime on
    # first use, and leave the parent's records to the parent.
    reset: set[int] = set()
    for connector in list(_CONNECTORS):
        rt = connector._rt
        if rt is not None:
            _INHERITED.append(rt)
            connector._rt = None
        connector._state_lock = threading.Lock()
        if connector._state == _OPEN:
            connector._state = _NEW
        # A caller's requests.Session is shared with the parent: its pools hold the parent's sockets.
        requests_mod = sys.modules.get("requests")
        session = connector._transport_arg
        if (
            requests_mod is not None
            and isinstance(session, requests_mod.Session)
            and id(session) not in reset
        ):
            reset.add(id(session))
            reset_session_pools_after_fork(session)


def _close_all_at_exit() -> None:
    for connector in list(_CONNECTORS):
        if connector._state == _OPEN:
            try:
                connector.close(connector.config.exit_timeout)
            except Exception:  # exit must go on whatever one connector does
                _log.exception("closing %r at interpreter exit failed", connector)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

# threading's exit hooks run in reverse order of registration, before non-daemon
# threads are joined: registered after concurrent.futures' own (imported above),
# ours runs first, so an unclosed connector cancels its backlog instead of the
# executor draining it at exit.
_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(_close_all_at_exit)
else:  # pragma: no cover - every supported CPython has it
    import atexit

    atexit.register(_close_all_at_exit)
