"""How an accepted record reaches the worker threads: broadcast fan-out and batches.

:class:`DeliveryMixin` is part of :class:`HttpSinkConnector`; it keeps the
strategy and batching plumbing out of the core module. A *unit* is a
``_RecordFuture``: the record itself, or for a broadcast one pinned copy per
URL. Units go to a worker one by one (``_attempt``) or, with batching, into the
per-URL :class:`Batcher`, whose batches a worker sends with :meth:`_attempt_batch`.
Every unit still resolves through the connector's once-only ``_resolve``.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import TYPE_CHECKING, Any

from eventmesh_http_sink.dispatch.batching import batch_body, batch_key, split_outcomes
from eventmesh_http_sink.dispatch.strategies import BroadcastJoin
from eventmesh_http_sink.errors import SinkClosedError, SinkError
from eventmesh_http_sink.results import SendResult
from eventmesh_http_sink.wire.request_options import status_error

if TYPE_CHECKING:
    from eventmesh_http_sink.config import HttpSinkConfig
    from eventmesh_http_sink.connector import _RecordFuture, _Runtime
    from eventmesh_http_sink.dispatch.strategies import Strategy
    from eventmesh_http_sink.scheduling.retry import RetryPolicy
    from eventmesh_http_sink.tracing import AttemptTracer
    from eventmesh_http_sink.wire.request_options import RequestOptions

__all__ = ["DeliveryMixin"]

_log = logging.getLogger("eventmesh_http_sink")


def _own_copy(error: SinkError) -> SinkError:
    # Each record's Future raises its own exception object: a shared one would
    # have its traceback and url rewritten by every record that raises it.
    err = copy.copy(error)
    err.__cause__ = error.__cause__
    return err


class DeliveryMixin:
    """Dispatch of accepted records: fan-out, batching, batch attempts."""

    if TYPE_CHECKING:  # provided by HttpSinkConnector
        config: HttpSinkConfig
        _urls: tuple[str, ...]
        _rt: _Runtime | None
        _strategy: Strategy
        _opts: RequestOptions
        _policy: RetryPolicy
        _base_headers: dict[str, str]
        _method: str
        _tracer: AttemptTracer | None

        def _resolve(self, future: _RecordFuture, outcome: SendResult | SinkError) -> bool: ...
        def _enqueue(self, rt: _Runtime, future: _RecordFuture) -> None: ...
        def _retry_or_fail(self, rt: _Runtime, future: _RecordFuture, error: SinkError) -> None: ...

    def _dispatch(self, rt: _Runtime, future: _RecordFuture) -> None:
        """Send a newly accepted record (called from ``put`` after its slot is taken)."""
        if self.config.delivery_strategy != "broadcast":
            self._send_unit(rt, future)
            return
        from eventmesh_http_sink.connector import _RecordFuture

        urls = self._urls
        join = BroadcastJoin(future, urls, self._resolve)
        children = []
        for url in urls:
            # A context object of its own (two children may resolve at once, and one context
            # cannot be entered twice); a copy, so tracing sees the span current at put.
            child = _RecordFuture(future._rec, future._body, future._hdrs, future._ctx.copy())
            child._pin = url
            child._item = future._item
            child._t0 = future._t0
            child.set_running_or_notify_cancel()
            child.add_done_callback(join.child_done)
            children.append(child)
        with rt.lock:
            rt.live.update(children)
        for child in children:
            self._send_unit(rt, child)

    def _send_unit(self, rt: _Runtime, unit: _RecordFuture) -> None:
        """Hand one unit to a worker, or to its URL's batch. Never raises."""
        batcher = rt.batcher
        try:
            if batcher is None:
                self._enqueue(rt, unit)
                return
            url = self._strategy.choose(unit, rt.next_index)
            if batcher.add(url, unit, len(unit._item)):
                return
            raise RuntimeError("the batcher is stopped")
        except RuntimeError as exc:  # close() shut the executor or batcher meanwhile
            self._resolve(unit, _closed(unit, exc))

    def _send_batch(self, url: str, units: list[_RecordFuture]) -> None:
        """The batcher's ``send``: one worker task per batch."""
        rt = self._rt
        try:
            if rt is None:
                raise RuntimeError("no runtime")
            rt.executor.submit(self._attempt_batch, url, units)
        except RuntimeError as exc:
            for unit in units:
                self._resolve(unit, _closed(unit, exc))

    def _drain_batches(self, rt: _Runtime) -> None:
        """``flush`` and ``close`` send partial batches at once."""
        if rt.batcher is not None:
            rt.batcher.drain()

    def _attempt_batch(self, url: str, units: list[_RecordFuture]) -> None:
        """Worker: send one batch, then resolve or retry each record on its own."""
        rt = self._rt
        units = [u for u in units if not u.done()]  # cancelled at close while queued
        if rt is None or not units:
            return
        batch = self.config.batch
        if batch is None:  # only the batcher calls this, and only with batching on
            return
        body, content_type = batch_body(
            [u._item for u in units], batch.format, self.config.encoding.startswith("cloudevents")
        )
        headers = self._base_headers.copy()
        headers.setdefault("Content-Type", content_type)  # a configured Content-Type wins
        headers["Idempotency-Key"] = batch_key([u._rec.record_id for u in units])
        self._opts.batch_headers(headers)
        body = self._opts.compress(body, headers)
        signer = self.config.signing
        if signer is not None:  # Standard Webhooks: per attempt, over the bytes sent (signing.py)
            headers = signer.sign_headers(headers, headers["Idempotency-Key"], body, time.time())
        for unit in units:
            unit._url = url
            unit._attempts += 1
        rt.sending.update(units)
        span = None
        if self._tracer is not None:  # tracing: one span linked to every record's parent
            attempt = min(u._attempts for u in units)
            span, headers = self._tracer.start_batch(url, headers, [u._ctx for u in units], attempt)
        errors: list[SinkError | None]
        status = 0
        try:
            response = self._opts.send(rt.transport, self._method, url, body, headers)
        except SinkError as exc:
            errors = [exc] * len(units)
        except Exception as exc:  # a transport bug must not lose the records' outcomes
            err = SinkError(f"unexpected {type(exc).__name__} sending to {url}: {exc}", url=url)
            err.__cause__ = exc
            errors = [err] * len(units)
        else:
            status = response.status
            if not 200 <= status < 300:
                errors = [status_error(response, url)] * len(units)
            elif batch.result_parser is not None:
                errors = split_outcomes(
                    batch.result_parser, status, response.body, [u._rec for u in units], url
                )
            else:
                errors = [None] * len(units)
        if span is not None:  # tracing: the request's outcome (status 0: no response was read)
            failed = not 200 <= status < 300  # a record the result parser refused is not the request's
            span.end(status or None, errors[0] if failed else None)
        rt.sending.difference_update(units)
        now = time.monotonic()
        for unit, outcome in zip(units, errors, strict=True):
            # The result store keeps one entry per record and attempt, batched or not.
            rt.hooks.after_attempt(
                unit._rec, unit._attempts, url, response if outcome is None else None, outcome
            )
            if outcome is None:
                self._strategy.report(unit, url, None, False)
                result = SendResult(
                    unit._rec.record_id,
                    unit._rec.topic,
                    url,
                    status,
                    unit._attempts,
                    now - unit._t0,
                    response.body,
                )
                self._resolve(unit, result)
            else:
                error = _own_copy(outcome)
                self._strategy.report(unit, url, error, self._policy.is_retryable(error))
                self._retry_or_fail(rt, unit, error)


def _closed(unit: Any, cause: BaseException) -> SinkClosedError:
    from eventmesh_http_sink.connector import _closed_error

    err: SinkClosedError = _closed_error(unit, cause)
    return err
