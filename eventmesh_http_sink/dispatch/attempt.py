"""One attempt, single or batched, and the one guarded way to finish it.

Every path that holds a record between "attempt started" and "outcome
recorded" runs inside :meth:`Attempts.guarded`: the single-record loop, the
batch path, broadcast copies, the timers that hand back records after a retry
backoff or a rate-limit or circuit wait, and the intake's hand-off to the
queue. Whatever it raises (a bug, a hook, user code such as ``success_when``
or ``result_parser`` raising ``SystemExit``) is logged once, every record the
step held gets an outcome (the once-only resolver makes a second one
impossible), and the in-flight mark is given back in a ``finally``. The worker
loop around it never sees an exception.

:meth:`Attempts.request` is the one per-attempt seam of both paths, where the
final headers and body are known: the Standard Webhooks signature, the
attempt's OpenTelemetry span (its ``traceparent`` in the headers), the send,
the span's end. After it, :meth:`Attempts._settle` is the one sequence for
every record of the attempt: the result store and breaker hooks, the
strategy's report, then the outcome or a retry on the timer. A batch the
endpoint took whole is settled in one pass of the same steps
(:meth:`Attempts._settle_delivered`: the strategy hears the success once).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from eventmesh_http_sink.dispatch.batching import batch_body, batch_key, split_outcomes
from eventmesh_http_sink.errors import SinkError
from eventmesh_http_sink.outcomes.resolver import closed_error, unexpected_error
from eventmesh_http_sink.redact import redact_text, redact_url
from eventmesh_http_sink.results import SendResult
from eventmesh_http_sink.wire.request_options import status_error

if TYPE_CHECKING:
    from eventmesh_http_sink.config import HttpSinkConfig
    from eventmesh_http_sink.dispatch.strategies import Strategy
    from eventmesh_http_sink.dispatch.unit import Unit
    from eventmesh_http_sink.outcomes.hooks import Hooks
    from eventmesh_http_sink.outcomes.resolver import Resolver
    from eventmesh_http_sink.scheduling.retry import RetryPolicy, RetryScheduler
    from eventmesh_http_sink.tracing import AttemptSpan, AttemptTracer
    from eventmesh_http_sink.wire.request_options import RequestOptions
    from eventmesh_http_sink.wire.transport import Response, Transport

__all__ = ["Attempts"]

_log = logging.getLogger("eventmesh_http_sink")


# The outcome of a request that raised before it had one (only seen by the span's end).
_NOT_SENT = SinkError("the attempt raised before it had an outcome")


def _unexpected(exc: Exception, url: str) -> SinkError:
    # What the transport raised that is not a SinkError: a bug, failing the attempt like any error.
    err = SinkError(
        f"unexpected {type(exc).__name__} sending to {redact_url(url)}: {redact_text(str(exc))}", url=url
    )
    err.__cause__ = exc
    return err


def _own_copy(error: SinkError) -> SinkError:
    # Each record's Future raises its own exception object: a shared one would
    # have its traceback and url rewritten by every record that raises it.
    err = copy.copy(error)
    err.__cause__ = error.__cause__
    return err


class Attempts:
    """Makes attempts for the dispatcher and finishes each one exactly once per record.

    Args:
        config: The connector's config.
        transport: Sends one request.
        options: Per-request options (bearer token, ``success_when``, auth for batches).
        strategy: Chooses each attempt's URL and hears how it went.
        policy: Whether and when a failed attempt is retried.
        hooks: Rate limit and breaker gate; result store and breaker after each attempt.
        resolver: The once-only resolver.
        retries: The timer where records wait out a retry backoff.
        waits: The timer where records wait for a rate-limit token or a circuit.
        sending: The dispatcher's set of units on the wire (for ``stats().in_flight``).
        next_index: The round-robin counter.
        base_headers: The connector's headers (batch requests start from them).
        tracer: The OpenTelemetry attempt tracer (``None`` unless ``tracing=True``).
    """

    def __init__(
        self,
        config: HttpSinkConfig,
        transport: Transport,
        *,
        options: RequestOptions,
        strategy: Strategy,
        policy: RetryPolicy,
        hooks: Hooks,
        resolver: Resolver,
        retries: RetryScheduler[Unit],
        waits: RetryScheduler[Unit],
        sending: set[Unit],
        next_index: Callable[[], int],
        base_headers: dict[str, str],
        tracer: AttemptTracer | None = None,
    ) -> None:
        self._config = config
        self._signer = config.signing
        self._tracer = tracer
        self._transport = transport
        self._options = options
        self._passthrough = options.passthrough
        self._strategy = strategy
        self._policy = policy
        self._hooks = hooks
        self._resolver = resolver
        self._retries = retries
        self._waits = waits
        self._sending = sending
        # close's deadline passed: no attempt starts (set once by the dispatcher, see stop()).
        self.closing = False
        # Only the features that watch attempts (breaker, result store) and a strategy that
        # keeps state per URL (failover) need to hear of a 2xx: skip the calls otherwise.
        self._watch = hooks.watches_attempts
        self._report = strategy.reports
        self._next_index = next_index
        self._base_headers = base_headers
        self._method = config.method
        self._urls = config.urls
        # With one URL every strategy chooses it: no call per attempt to learn that.
        self._only = config.urls[0] if len(config.urls) == 1 else None

    # -- the guard -------------------------------------------------------------------------

    def stop(self) -> None:
        """``close``'s deadline: no attempt starts from now on (an attempt under way ends)."""
        self.closing = True

    def guarded(self, units: Sequence[Unit], step: Callable[..., bool], *args: Any) -> bool:
        """Run ``step(*args)`` for ``units``; whatever it raises, each unit ends with one outcome.

        Returns:
            What ``step`` returned (``True``: a 2xx whose latency may teach the
            concurrency limit), ``False`` when it raised.
        """
        finished = False
        cause: BaseException | None = None
        try:
            result = step(*args)
            finished = True
            return result
        except BaseException as exc:  # a bug or user code: logged here, outcomes given below
            cause = exc
            _log.error(
                "sending record(s) %s failed unexpectedly; they fail, the connector goes on",
                ", ".join(u.record.record_id for u in units[:5]),
                exc_info=True,
            )
            return False
        finally:
            if not finished:
                # The step stopped between its in-flight mark and its removal (each step clears
                # its own on the way out; clearing here always would race a later attempt's mark).
                self._sending.difference_update(units)
                for unit in units:  # records already resolved are skipped by the resolver
                    try:
                        self._resolver.resolve(unit, unexpected_error(unit, cause))
                    except BaseException:  # one record's done-callback must not strand the next
                        _log.exception("resolving record %s failed", unit.record.record_id)

    # -- single records --------------------------------------------------------------------

    def single(self, unit: Unit) -> bool:
        """One attempt for one unit (a worker loop's step); ``True`` on a 2xx."""
        return self.guarded((unit,), self._single, unit)

    def _single(self, unit: Unit) -> bool:
        if not self._resolver.is_live(unit):
            return False  # cancelled at close while queued
        url = self._only or self._strategy.choose(unit, self._next_index)
        if self._hooks.active:
            verdict = self._hooks.gate(unit, url, self._urls)
            if isinstance(verdict, float):
                self.wait(verdict, unit)  # a rate-limit token or a circuit: on a timer, no worker held
                return False
            if isinstance(verdict, SinkError):
                self._resolver.resolve(unit, verdict)
                return False
            url = verdict  # round robin: another URL when this one's circuit is open
        if self.closing:
            return False  # close's deadline passed: close claimed this record, nothing starts now
        unit.url = url
        unit.attempts += 1
        self._sending.add(unit)
        tracer = self._tracer
        trace = None
        if tracer is not None:
            context, attempts = unit.context, unit.attempts
            trace = lambda headers: tracer.start(url, headers, context, attempts)  # noqa: E731
        response, error = self.request(url, unit.body, unit.headers, unit.record.record_id, trace)
        self._sending.discard(unit)
        return self._settle(unit, url, response, error, time.monotonic())

    # -- batches ---------------------------------------------------------------------------

    def batch(self, url: str, units: list[Unit]) -> None:
        """Send one batch to ``url`` (a worker task), then settle each record on its own."""
        self.guarded(units, self._batch, url, units)

    def _batch(self, url: str, units: list[Unit]) -> bool:
        units = [u for u in units if self._resolver.is_live(u)]  # cancelled at close while batched
        batch = self._config.batch
        if not units or batch is None or self.closing:
            return False
        body, content_type = batch_body(
            [u.item for u in units], batch.format, self._config.encoding.startswith("cloudevents")
        )
        headers = self._base_headers.copy()
        headers.setdefault("Content-Type", content_type)  # a configured Content-Type wins
        headers["Idempotency-Key"] = batch_key([u.record.record_id for u in units])
        self._options.batch_headers(headers)
        body = self._options.compress(body, headers)
        for unit in units:
            unit.url = url
            unit.attempts += 1
        self._sending.update(units)
        tracer = self._tracer
        trace = None
        if tracer is not None:  # one span, linked to every record's parent
            contexts, attempts = [u.context for u in units], min(u.attempts for u in units)
            trace = lambda headers: tracer.start_batch(url, headers, contexts, attempts)  # noqa: E731
        response, error = self.request(url, body, headers, headers["Idempotency-Key"], trace)
        self._sending.difference_update(units)
        if response is not None and batch.result_parser is None:
            self._settle_delivered(units, url, response, time.monotonic())  # the common case
            return False
        errors: list[SinkError | None]
        if response is None:
            errors = [error] * len(units)
        elif batch.result_parser is not None:
            errors = split_outcomes(
                batch.result_parser, response.status, response.body, [u.record for u in units], url
            )
        else:
            errors = [None] * len(units)
        now = time.monotonic()
        for unit, outcome in zip(units, errors, strict=True):
            if outcome is None:
                self._settle(unit, url, response, None, now)
            else:
                self._settle(unit, url, None, _own_copy(outcome), now)
        return False

    def _settle_delivered(self, units: list[Unit], url: str, response: Response, now: float) -> None:
        """:meth:`_settle`'s success branch for every record of a delivered batch, in one pass.

        The strategy hears the success once per batch: a success only clears the
        URL's failure count, the same whichever record reports it. The hooks (result
        store, breaker) still see each record, when there are any.
        """
        if self._report:
            self._strategy.report(units[0], url, None, False)
        hooks = self._hooks
        each = self._watch
        resolve = self._resolver.resolve
        status, body = response.status, response.body
        for unit in units:
            record = unit.record
            attempts = unit.attempts
            if each:
                hooks.after_attempt(record, attempts, url, response, None)
            result = SendResult(record.record_id, record.topic, url, status, attempts, now - unit.t0, body)
            resolve(unit, result)

    # -- the request and what follows it ---------------------------------------------------

    def request(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        msg_id: str,
        trace: Callable[[dict[str, str]], tuple[AttemptSpan, dict[str, str]]] | None,
    ) -> tuple[Response, None] | tuple[None, SinkError]:
        """One attempt's request, single or batch: sign, start the span, send, end the span.

        Args:
            url: Where to.
            body: The exact bytes to send.
            headers: The attempt's headers (not modified: a record's are shared by its retries).
            msg_id: The signature's message id: the record id, or a batch's ``Idempotency-Key``.
            trace: Starts the attempt's span and returns it with the headers carrying it.

        Returns:
            ``(response, None)`` for a 2xx, else ``(None, error)`` (a non-2xx is an
            :class:`HttpStatusError`).
        """
        if self._signer is not None:  # Standard Webhooks: per attempt, over the bytes sent (signing.py)
            headers = self._signer.sign_headers(headers, msg_id, body, time.time())
        span = None
        if trace is not None:
            span, headers = trace(headers)
        outcome: tuple[Response, None] | tuple[None, SinkError] = (None, _NOT_SENT)
        try:
            # The request on the wire; the bearer token and ``success_when`` are applied
            # by the request options around the send (skipped when there are none).
            try:
                if self._passthrough:
                    response = self._transport.send(self._method, url, body, headers)
                else:
                    response = self._options.send(self._transport, self._method, url, body, headers)
            except SinkError as exc:
                outcome = None, exc
            except Exception as exc:  # a transport bug: the record's failure, retried like any
                outcome = None, _unexpected(exc, url)
            else:
                if 200 <= response.status < 300:
                    outcome = response, None
                else:
                    outcome = None, status_error(response, url)
        finally:
            if span is not None:  # ended whatever happened (a BaseException from success_when too)
                ok, err = outcome
                if ok is not None:
                    span.end(ok.status)
                elif err is not None:
                    span.end(err.status, err)
        return outcome

    def _settle(
        self, unit: Unit, url: str, response: Response | None, error: SinkError | None, now: float
    ) -> bool:
        """After an attempt: the hooks, the strategy, then the outcome or a retry."""
        record = unit.record
        if error is None and response is not None:
            if self._watch:
                self._hooks.after_attempt(record, unit.attempts, url, response, None)
            if self._report:
                self._strategy.report(unit, url, None, False)
            result = SendResult(
                record.record_id,
                record.topic,
                url,
                response.status,
                unit.attempts,
                now - unit.t0,
                response.body,
            )
            self._resolver.resolve(unit, result)
            return True
        if error is None:  # defensive: an attempt has a response or an error
            error = SinkError(f"attempt to {redact_url(url)} gave neither a response nor an error", url=url)
        self._hooks.after_attempt(record, unit.attempts, url, None, error)
        self._strategy.report(unit, url, error, self._policy.is_retryable(error))
        self.retry_or_fail(unit, error)
        return False

    def retry_or_fail(self, unit: Unit, error: SinkError) -> None:
        """Put ``unit`` on the retry timer, or give it its final ``error``."""
        if unit.waits is None:
            unit.waits = self._policy.new_waits()
        elapsed = time.monotonic() - unit.t0
        wait = self._policy.next_wait(error, unit.attempts, elapsed, unit.waits)
        if wait is not None and self._resolver.is_live(unit) and self._retries.schedule(wait, unit):
            self._resolver.note_retry(unit.url, error)
            _log.debug(
                "record %s: attempt %d failed (%s); retrying in %.3fs",
                unit.record.record_id,
                unit.attempts,
                redact_text(str(error)),
                wait,
            )
            return
        self._resolver.resolve(unit, error)

    def wait(self, delay: float, unit: Unit) -> None:
        """Hold ``unit`` on the gate's timer for ``delay`` seconds (a token or a circuit)."""
        if not self._waits.schedule(delay, unit):
            self._resolver.resolve(unit, closed_error(unit))
