"""OpenTelemetry: one CLIENT span per attempt, parented by the caller's span at ``put``.

Optional (``pip install 'eventmesh-http-sink[otel]'``) and off by default: with
``HttpSinkConfig(tracing=False)`` the connector holds no tracer and this module
imports nothing from ``opentelemetry`` (a test checks that the package works with
the library absent). With ``tracing=True``, :class:`AttemptTracer` follows the
HTTP client semantic conventions:

* span name ``POST`` (the method; ``HTTP`` for a method outside the standard set),
  kind CLIENT, attributes ``http.request.method``, ``server.address``,
  ``server.port``, ``url.full`` (through :func:`redact_url`: query values and
  userinfo are ``***``), ``network.protocol.version``, ``http.request.resend_count``
  on a retry, then ``http.response.status_code`` when a response was read;
* a failed attempt (the library's view: any non-2xx, a transport error, a
  ``success_when`` refusal) gets status ERROR and ``error.type``: the status code
  as a string for an HTTP status error, otherwise the error's class name;
* the parent is the span current when ``put`` was called: each record carries the
  caller's ``contextvars`` context, so the worker thread reads the OpenTelemetry
  context out of it without entering the caller's thread. Every retry is a new
  span under that same parent;
* ``traceparent`` / ``tracestate`` (or whatever the globally configured propagator
  writes) go into the request's headers, naming the attempt's span;
* a batch request is one span with no parent and a link to each record's parent
  span, the usual shape for one operation on behalf of many traces.

The tracer comes from the global tracer provider (``trace.get_tracer``, a proxy
that follows a provider set later), so configure OpenTelemetry once, as usual.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from urllib3.util import parse_url

from .errors import ConfigError, HttpStatusError
from .redact import redact_url

if TYPE_CHECKING:
    import attrs
    from opentelemetry.trace import Span

    from .config import HttpSinkConfig

__all__ = ["AttemptSpan", "AttemptTracer", "attempt_tracer", "check_tracing"]

_INSTALL_HINT = "needs OpenTelemetry: pip install 'eventmesh-http-sink[otel]'"
# The methods the semantic conventions name; any other is reported as _OTHER.
_KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def check_tracing(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    """The ``tracing`` field's validator: a bool, and ``True`` only with the ``otel`` extra.

    Raises:
        ConfigError: ``value`` is not a bool, or OpenTelemetry's API is not installed.
    """
    if not isinstance(value, bool):
        raise ConfigError(attr.name, f"must be a bool, got {value!r}")
    if value:
        try:
            import opentelemetry.propagate
            import opentelemetry.trace  # noqa: F401
        except ImportError:
            raise ConfigError(attr.name, _INSTALL_HINT) from None


def attempt_tracer(config: HttpSinkConfig) -> AttemptTracer | None:
    """The connector's tracer: ``None`` unless ``config.tracing`` (so nothing is imported)."""
    if not config.tracing:
        return None
    return AttemptTracer(config.method, config.urls)


class AttemptTracer:
    """Starts and ends the span of each attempt; one per connector, shared by its workers.

    Args:
        method: The HTTP method of every request.
        urls: The configured URLs (their span attributes are computed once).
    """

    def __init__(self, method: str, urls: Iterable[str]) -> None:
        # Imported here, not at module level: a connector without tracing never loads them.
        from opentelemetry import context, propagate, trace

        from .version import __version__

        self._trace = trace
        self._get_current = context.get_current
        self._inject = propagate.inject
        self._tracer = trace.get_tracer("eventmesh_http_sink", __version__)
        self._client = trace.SpanKind.CLIENT
        self._error = trace.StatusCode.ERROR
        known = method in _KNOWN_METHODS  # case-sensitive, as the conventions say
        self._name = method if known else "HTTP"
        self._method_attrs: dict[str, Any] = {"http.request.method": method if known else "_OTHER"}
        if not known:
            self._method_attrs["http.request.method_original"] = method
        self._by_url: dict[str, Mapping[str, Any]] = {url: self._url_attributes(url) for url in urls}

    def _url_attributes(self, url: str) -> Mapping[str, Any]:
        parsed = parse_url(url)
        scheme = parsed.scheme or "http"
        return {
            **self._method_attrs,
            "server.address": (parsed.host or "").strip("[]"),  # an IPv6 literal without brackets
            "server.port": parsed.port or _DEFAULT_PORTS.get(scheme, 80),
            "url.full": redact_url(url),
            "network.protocol.version": "1.1",
        }

    def _attributes(self, url: str, resends: int) -> Mapping[str, Any]:
        base = self._by_url.get(url)
        if base is None:  # defensive: every URL the strategies choose is a configured one
            base = self._by_url[url] = self._url_attributes(url)
        if resends < 1:
            return base
        return {**base, "http.request.resend_count": resends}

    def start(
        self, url: str, headers: Mapping[str, str], caller: contextvars.Context, attempt: int
    ) -> tuple[AttemptSpan, dict[str, str]]:
        """Start the span of one record's attempt, under the span current at ``put``.

        Args:
            url: Where the attempt goes.
            headers: The request headers; they are copied, never changed.
            caller: The ``contextvars`` context captured by ``put``.
            attempt: The attempt's number, 1 for the first (later ones are resends).

        Returns:
            ``(span, headers)``: the span to :meth:`AttemptSpan.end`, and the headers
            to send (a new dict, the trace context added).
        """
        try:
            parent = caller.run(self._get_current)
        except RuntimeError:
            # That context is entered already (its record resolving at close on another
            # thread, say): a copy holds the same values and is entered by nobody.
            parent = caller.copy().run(self._get_current)
        span = self._tracer.start_span(self._name, parent, self._client, self._attributes(url, attempt - 1))
        return AttemptSpan(span, self._error), self._with_trace_headers(span, parent, headers)

    def start_batch(
        self, url: str, headers: Mapping[str, str], callers: Iterable[contextvars.Context], attempt: int
    ) -> tuple[AttemptSpan, dict[str, str]]:
        """Start the span of a batch request: no parent, a link to each record's parent span.

        Args:
            url: Where the batch goes.
            headers: The batch request's headers; copied, never changed.
            callers: Each record's ``contextvars`` context captured by ``put``.
            attempt: The fewest attempts any record of the batch has made, this one
                included (``http.request.resend_count`` only when every record is resent).
        """
        links = []
        seen = set()
        get_span = self._trace.get_current_span
        for caller in callers:
            try:
                span_context = caller.run(get_span).get_span_context()
            except RuntimeError:  # entered already (see start)
                span_context = caller.copy().run(get_span).get_span_context()
            key = (span_context.trace_id, span_context.span_id)
            if span_context.is_valid and key not in seen:  # records put under one span: one link
                seen.add(key)
                links.append(self._trace.Link(span_context))
        root = self._trace.set_span_in_context(self._trace.INVALID_SPAN)  # not the worker's context
        span = self._tracer.start_span(
            self._name, root, self._client, self._attributes(url, attempt - 1), links
        )
        return AttemptSpan(span, self._error), self._with_trace_headers(span, root, headers)

    def _with_trace_headers(self, span: Span, parent: Any, headers: Mapping[str, str]) -> dict[str, str]:
        # The propagator writes the *attempt's* span as the receiver's parent (an
        # unsampled span too: the receiver then joins the trace without recording).
        injected: dict[str, str] = {}
        self._inject(injected, self._trace.set_span_in_context(span, parent))
        if not injected:  # no valid span (no SDK configured, no parent): headers as they were
            return dict(headers)
        # A configured ``Traceparent`` in another case must not go out beside ours.
        names = {name.lower() for name in injected}
        carrier = {name: value for name, value in headers.items() if name.lower() not in names}
        carrier.update(injected)
        return carrier


class AttemptSpan:
    """The span of one attempt in flight: :meth:`end` it once the attempt's outcome is known."""

    __slots__ = ("_error", "span")

    def __init__(self, span: Span, error_code: Any) -> None:
        self.span = span  # the OpenTelemetry span (for tests and custom transports)
        self._error = error_code

    def end(self, status: int | None, error: BaseException | None = None) -> None:
        """End the span with the response status and, on failure, the error.

        Args:
            status: The HTTP status read, or ``None`` when no response was read.
            error: Why the attempt failed, or ``None`` for a 2xx the library accepted.
        """
        span = self.span
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            kind = str(error.status) if isinstance(error, HttpStatusError) else type(error).__qualname__
            span.set_attribute("error.type", kind)
            # Not the message: it may quote the response body or a URL; the type says enough.
            span.set_status(self._error, kind)
        span.end()
