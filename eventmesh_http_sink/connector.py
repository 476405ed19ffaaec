"""The connector: bounded intake, a thread pool that sends, and exactly one outcome per record.

Threads (see the README's picture):

* The caller's thread validates and encodes the record, reserves one of
  ``max_pending`` slots (blocking or raising per ``when_full``) and hands it to
  the dispatcher.
* A worker thread makes one attempt (:mod:`.dispatch.attempt`). Success or a
  final failure goes to the resolver (:mod:`.outcomes.resolver`), which claims
  the record once, runs its callback, then resolves its Future; a retryable
  failure waits on a timer holding no worker.
* ``close(timeout)`` cancels what is left at its deadline and runs those
  callbacks spread over the pool (:mod:`.runtime`).

This module is the public face only: intake, flush, close, stats, export.
"""

from __future__ import annotations

import contextvars
import time
import typing
from collections.abc import Iterable
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any

from eventmesh_http_sink.config import HttpSinkConfig
from eventmesh_http_sink.dispatch.batching import batch_item
from eventmesh_http_sink.dispatch.strategies import make_strategy
from eventmesh_http_sink.dispatch.unit import RecordFuture, Unit, callback_running
from eventmesh_http_sink.errors import (
    ConfigError,
    InvalidRecordError,
    QueueFullError,
    RecordEncodingError,
    SinkClosedError,
)
from eventmesh_http_sink.outcomes.result_store import ResultStore
from eventmesh_http_sink.records import ConnectRecord, encode_data, encode_extensions
from eventmesh_http_sink.redact import redact_url
from eventmesh_http_sink.results import SendResult
from eventmesh_http_sink.runtime import CLOSED, OPEN, ProcessRuntime, Runtime, is_requests_session
from eventmesh_http_sink.scheduling.retry import RetryPolicy
from eventmesh_http_sink.stats import SinkStats
from eventmesh_http_sink.tracing import attempt_tracer
from eventmesh_http_sink.wire.headers import base_headers
from eventmesh_http_sink.wire.request_options import RequestOptions
from eventmesh_http_sink.wire.transport import RequestsTransport, Transport, Urllib3Transport

if TYPE_CHECKING:
    import requests

__all__ = ["HttpSinkConnector", "SinkStats"]


class HttpSinkConnector:
    """Delivers :class:`ConnectRecord` objects to HTTP endpoints from synchronous code.

    ``put`` returns a :class:`concurrent.futures.Future` at once; a bounded
    thread pool sends the request; the record's callback is told the outcome,
    exactly once, before the Future resolves. Use it as a context manager, or
    call :meth:`start` and :meth:`close`::

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
        self._max_body = config.max_body_bytes
        self._base_headers = base_headers(config)
        self._strategy = make_strategy(
            config.urls, config.delivery_strategy, config.failover_threshold, config.failover_cooldown
        )
        self._opts = RequestOptions(config)
        # Per-connector facts _prepare would otherwise work out per record.
        self._options_active = self._opts.active
        self._content_type_given = "Content-Type" in self._base_headers  # a configured one wins
        # Batching without CloudEvents: only the record's batch element is ever sent (auth,
        # gzip and the headers apply to the batch request), so put() builds nothing else.
        self._batch_items = config.batch is not None and not config.encoding.startswith("cloudevents")
        self._max_pending = config.max_pending
        self._tracer = attempt_tracer(config)  # None unless tracing=True (tracing.py)
        self._policy = RetryPolicy(config.retry)
        rs = config.result_store
        self._store = None if rs is None else ResultStore(rs.max_size)
        # when_full="raise": no wait; else put_timeout (None: as long as it takes).
        self._put_wait = 0.0 if config.when_full == "raise" else config.put_timeout
        self._process = ProcessRuntime(
            self._new_runtime,
            session=transport if is_requests_session(transport) else None,
            close_at_exit=self._close_at_exit,
        )

    def __repr__(self) -> str:
        urls = [redact_url(url) for url in self.config.urls]
        return f"<HttpSinkConnector {self._process.state} urls={urls!r}>"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> HttpSinkConnector:
        """Create the thread pool and connection pools. ``put`` calls it lazily.

        Raises:
            SinkClosedError: the connector was closed.
        """
        self._process.open()
        return self

    def _close_at_exit(self) -> None:
        self.close(self.config.exit_timeout)

    def _new_runtime(self) -> Runtime:
        return Runtime(
            self.config,
            self._new_transport(),
            store=self._store,
            strategy=self._strategy,
            options=self._opts,
            policy=self._policy,
            base_headers=self._base_headers,
            tracer=self._tracer,
        )

    def _new_transport(self) -> Transport:
        arg = self._transport_arg
        if arg is None:
            return Urllib3Transport(self.config)
        if is_requests_session(arg):
            return RequestsTransport(typing.cast("requests.Session", arg), self.config)
        return typing.cast(Transport, arg)

    def __enter__(self) -> HttpSinkConnector:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._process.state == CLOSED

    # -- intake ------------------------------------------------------------------------------

    def put(self, record: ConnectRecord) -> Future[SendResult]:
        """Accept one record for delivery and return its Future at once.

        The Future's result is a :class:`SendResult`; on failure it raises the
        same :class:`SinkError` that the callback's context carries. It resolves
        after the record's callback has returned.

        Raises:
            InvalidRecordError: the record cannot be sent (too large, bad extensions);
                :class:`RecordEncodingError` (also a ``TypeError``) for unsupported data.
            QueueFullError: ``max_pending`` reached and ``when_full="raise"``, or
                ``put_timeout`` passed while blocked.
            SinkClosedError: the connector is closed.

        Each of them names the record.
        """
        unit = self._prepare(record)
        # _submit, inlined: put() is the hot path of the caller's thread.
        process = self._process
        rt = process.current() or process.open(
            f"the connector is closed: record {record.record_id} was not accepted"
        )
        unit.t0 = time.monotonic()
        rt.submit(unit, self._max_pending, self._put_wait, self._is_closed)
        return typing.cast(RecordFuture, unit.future)

    def put_all(self, records: Iterable[ConnectRecord]) -> list[Future[SendResult]]:
        """Accept several records (EventMesh's ``put(List<ConnectRecord>)``).

        Every record is validated and encoded before any is queued, so a bad
        record refuses the whole call. If the queue fills up (``when_full="raise"``
        or ``put_timeout``), the :class:`QueueFullError` carries the Futures of the
        records already accepted as ``accepted``.
        """
        prepared = [self._prepare(record) for record in records]
        accepted: list[Future[SendResult]] = []
        for unit in prepared:
            try:
                self._submit(unit)
            except (QueueFullError, SinkClosedError) as exc:
                exc.accepted = accepted
                raise
            accepted.append(typing.cast(RecordFuture, unit.future))
        return accepted

    def _prepare(self, record: ConnectRecord) -> Unit:
        # Validates and encodes one record in the caller's thread; every refusal names it.
        if not isinstance(record, ConnectRecord):
            raise RecordEncodingError(None, f"put() takes a ConnectRecord, got {type(record).__name__}")
        rid = record.record_id
        body, content_type = encode_data(record)
        if len(body) > self._max_body:
            raise InvalidRecordError(
                rid, f"body of {len(body)} bytes exceeds max_body_bytes ({self._max_body})"
            )
        # Empty extensions give no header and need no check: skip the call.
        extension = encode_extensions(record) if record.extensions else None
        if self._batch_items:
            if self._content_type_given:
                content_type = self._base_headers["Content-Type"]
            item = batch_item(rid, body, content_type)
            return Unit(record, body, {}, contextvars.copy_context(), future=RecordFuture(rid), item=item)
        headers = self._base_headers.copy()
        if not self._content_type_given:
            headers["Content-Type"] = content_type
        headers["Idempotency-Key"] = rid
        if extension is not None:
            headers["extension"] = extension
        item = b""
        if self._options_active:
            body, item = self._opts.prepare(record, body, headers)
        return Unit(record, body, headers, contextvars.copy_context(), future=RecordFuture(rid), item=item)

    def _submit(self, unit: Unit) -> None:
        rid = unit.record.record_id
        rt = self._process.current() or self._process.open(
            f"the connector is closed: record {rid} was not accepted"
        )
        unit.t0 = time.monotonic()
        rt.submit(unit, self._max_pending, self._put_wait, self._is_closed)

    def _is_closed(self) -> bool:
        return self._process.state == CLOSED

    # -- waiting and closing -----------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record accepted so far has finished, its callback included.

        Returns:
            ``True`` if nothing is pending, ``False`` if ``timeout`` passed first.

        Raises:
            RuntimeError: when called from inside a record's callback, where it
                would wait for itself.
        """
        _refuse_inside_callback("flush()")
        rt = self._process.current()
        return True if rt is None else rt.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop intake, wait for pending records, cancel what is left at the deadline.

        Later ``put`` calls raise :class:`SinkClosedError`. Records that have not
        finished within ``timeout`` seconds (``None``: wait for all, which the
        retry budget bounds) are reported through ``on_exception`` with a
        :class:`SinkClosedError`. At the deadline no attempt starts, requests on
        the wire are aborted, and the cancelled records' callbacks run spread over
        the pool's threads; ``close`` returns when every callback has returned.
        Closing twice is harmless.

        Raises:
            RuntimeError: when called from inside a record's callback.
        """
        _refuse_inside_callback("close()")
        rt = self._process.close()
        if rt is not None:
            rt.close(timeout)

    # -- observability -----------------------------------------------------------------------

    def stats(self) -> SinkStats:
        """A consistent snapshot of the counters (zeros before the first ``put``)."""
        rt = self._process.current()
        return SinkStats(0, 0, 0, 0, 0, 0, 0, 0) if rt is None else rt.stats()

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
        rt = self._process.current()
        if rt is None or self._process.state != OPEN or rt.hooks.server is None:
            return None
        return rt.hooks.server.url


def _refuse_inside_callback(what: str) -> None:
    future = callback_running()
    if future is not None:
        raise RuntimeError(
            f"{what} called from the callback of record {future.record_id} would wait for itself"
        )
