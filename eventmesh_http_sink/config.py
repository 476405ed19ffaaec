"""Configuration values, validated when they are built.

Both classes are frozen attrs classes: a config is a value that can be shared
between connectors and threads. Every validator raises :class:`ConfigError`
naming the field, so a mistake surfaces at construction, not at the first send.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

import attrs
from urllib3.util import parse_url

from ._validators import (
    boolean as _boolean,
)
from ._validators import (
    callable_ as _callable,
)
from ._validators import (
    instance_of as _instance_of,
)
from ._validators import (
    known_options as _known_options,
)
from ._validators import (
    non_empty_str as _non_empty_str,
)
from ._validators import (
    non_negative as _non_negative,
)
from ._validators import (
    non_negative_int as _non_negative_int,
)
from ._validators import (
    one_of as _one_of,
)
from ._validators import (
    optional as _optional,
)
from ._validators import (
    positive as _positive,
)
from ._validators import (
    positive_int as _positive_int,
)
from .dispatch.batching import BatchConfig
from .errors import ConfigError
from .outcomes.result_store import ResultStoreConfig
from .redact import redact_text, redact_url
from .scheduling.breaker import CircuitBreakerConfig
from .signing import SIGNATURE_HEADERS, WebhookSigner
from .tracing import check_tracing as _check_tracing
from .wire.headers import check_header, merge_headers

__all__ = ["DEFAULT_SENSITIVE_HEADERS", "HttpSinkConfig", "RetryConfig", "check_header"]

DEFAULT_SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 field-name / method token
_DEFAULT_RETRY_STATUSES = (408, 425, 429, 500, 502, 503, 504)
#: The accepted ``rate_limit`` range, in requests per second: at least one request
#: per 100 s (slower would park each record for minutes, past any sane retry budget),
#: at most a million (beyond that no limit is meant: use ``None``).
RATE_LIMIT_RANGE = (0.01, 1_000_000.0)


# -- validators: each names the field through ``attr.name`` ------------------------------
# The generic ones live in _validators.py, shared with the nested config classes.


def _dead_letter_target(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if callable(value):
        return
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ConfigError(attr.name, f"must be a file path or a callable, got {value!r}")
    directory = os.path.dirname(os.path.abspath(os.fspath(value)))
    if not os.path.isdir(directory):
        raise ConfigError(attr.name, f"directory {directory!r} does not exist")
    if os.path.isdir(os.fspath(value)):
        raise ConfigError(attr.name, f"{os.fspath(value)!r} is a directory, not a file")


def _rate_limit(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    low, high = RATE_LIMIT_RANGE
    # ``not low <= value <= high`` is also true for nan; inf is above the range.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(
            attr.name,
            f"must be None or a number of requests per second from {low:g} to {high:.0f}, got {value!r}",
        )


# -- converters ---------------------------------------------------------------------------


def _to_urls(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return tuple(value)
    raise ConfigError("urls", f"must be a URL string or a sequence of them, got {type(value).__name__}")


def _to_statuses(value: Any) -> tuple[int, ...]:
    try:
        return tuple(value)
    except TypeError:
        raise ConfigError("retry_on_status", f"must be a sequence of ints, got {value!r}") from None


def _to_headers(value: Any) -> Mapping[str, str]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise ConfigError("headers", f"must be a mapping of str to str, got {type(value).__name__}")
    return MappingProxyType(dict(value))


def _to_lower_set(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        value = (value,)
    try:
        return frozenset(str(v).lower() for v in value) | DEFAULT_SENSITIVE_HEADERS
    except TypeError:
        raise ConfigError(
            "sensitive_headers", f"must be a collection of header names, got {value!r}"
        ) from None


@_known_options
@attrs.frozen
class RetryConfig:
    """When and how long to retry a failed attempt.

    Waits follow ``backoff.expo`` (``initial_backoff * 2**n``, capped at
    ``max_backoff``) with full jitter. A ``Retry-After`` header on a retryable
    status replaces the computed wait. No attempt starts once ``max_elapsed``
    seconds have passed since ``put``. Connection errors, timeouts and unreadable
    responses are retried; a status is retried only if in ``retry_on_status``.

    Args:
        max_retries: Retries after the first attempt (0 disables retrying).
        initial_backoff: The first wait's upper bound, in seconds.
        max_backoff: The cap of a computed wait, in seconds.
        max_elapsed: The total time budget of a record, in seconds.
        retry_on_status: The HTTP statuses that are retried.
        respect_retry_after: Honour a ``Retry-After`` header (seconds or HTTP date).
        retry_business_errors: Retry a :class:`BusinessError` (``success_when`` said no).
    """

    max_retries: int = attrs.field(default=3, validator=_non_negative_int)
    initial_backoff: float = attrs.field(default=0.1, validator=_non_negative)
    max_backoff: float = attrs.field(default=30.0, validator=_non_negative)
    max_elapsed: float = attrs.field(default=300.0, validator=_positive)
    retry_on_status: tuple[int, ...] = attrs.field(default=_DEFAULT_RETRY_STATUSES, converter=_to_statuses)
    respect_retry_after: bool = attrs.field(default=True, validator=_boolean)
    retry_business_errors: bool = attrs.field(default=False, validator=_boolean)

    @retry_on_status.validator
    def _check_statuses(self, attr: attrs.Attribute[Any], value: tuple[int, ...]) -> None:
        for status in value:
            if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
                raise ConfigError(attr.name, f"{status!r} is not an HTTP status code")
            if 200 <= status <= 299:
                raise ConfigError(attr.name, f"{status} is a success status and cannot be retried")

    def __attrs_post_init__(self) -> None:
        if self.max_backoff < self.initial_backoff:
            raise ConfigError("max_backoff", f"must be >= initial_backoff ({self.initial_backoff})")


@_known_options
@attrs.frozen(repr=False)
class HttpSinkConfig:
    """Where and how records are delivered.

    Args:
        urls: One URL or a non-empty sequence of them (http or https; the query string
            is kept). Attempts go to them in turn (round robin).
        max_workers: Threads sending requests.
        max_pending: Records accepted but not yet finished (callback included).
        when_full: ``"block"`` waits for room in ``put`` (up to ``put_timeout``);
            ``"raise"`` raises :class:`QueueFullError` at once.
        put_timeout: Seconds a blocked ``put`` may wait; ``None`` waits forever.
        connect_timeout: Seconds to establish a connection.
        read_timeout: Seconds to wait for each read from the socket.
        attempt_timeout: Total seconds one attempt may take, body included;
            ``None`` for no total bound.
        pool_maxsize: Connections kept per host; defaults to ``max_workers``.
        keep_alive: Reuse connections between requests.
        headers: Extra headers sent with every request.
        method: The HTTP method.
        max_response_bytes: How much of a response body is kept in results and errors;
            the rest is drained (up to a bound) and discarded, never held.
        max_body_bytes: Records whose encoded body is larger are refused by ``put``.
        retry: The :class:`RetryConfig`.
        verify: Verify TLS certificates (on by default; turning it off logs a warning).
        ca_certs: A CA bundle file to verify against instead of the system's.
        client_cert: A client certificate file, or ``(cert_file, key_file)``.
        sensitive_headers: Header names (case-insensitive) shown as ``***`` in logs
            and reprs; ``Authorization``, ``Cookie`` and the like always are.
        exit_timeout: Seconds an unclosed connector gets to finish at interpreter exit
            before its remaining records are cancelled.
        delivery_strategy: ``"round_robin"`` (each attempt to the next URL), ``"broadcast"``
            (every record to every URL) or ``"failover"`` (stay on a URL until it fails).
        failover_threshold: Consecutive retryable failures that put a URL in cool-down.
        failover_cooldown: Seconds a failing URL is skipped by ``"failover"``.
        batch: A :class:`BatchConfig` to send many records per request; ``None`` sends one each.
        encoding: ``"json"``, ``"cloudevents-binary"``, ``"cloudevents-structured"`` or ``"raw"``.
        ce_source: The CloudEvents ``source`` (a record's ``extensions["source"]`` wins).
        ce_type: The CloudEvents ``type`` (a record's ``extensions["type"]`` wins).
        header_fn: ``fn(record) -> dict`` of extra headers per record.
        auth: ``(user, password)`` for HTTP Basic authentication.
        bearer_token: A token, or a callable returning one, sent as ``Authorization: Bearer``;
            a callable is called again after a 401 before one more try.
        compression: ``"gzip"`` to compress request bodies.
        compress_min_bytes: Bodies smaller than this are sent uncompressed.
        success_when: ``fn(status, headers, body) -> bool`` checked on 2xx responses; ``False``
            fails the attempt with :class:`BusinessError`.
        result_store: A :class:`ResultStoreConfig` to keep each attempt's outcome
            (``connector.export()``) and optionally serve it over HTTP.
        dead_letter: A JSON-lines file path, or a callable taking a dict, that receives
            every record whose final outcome is a failure.
        dead_letter_on_close: Also dead-letter records cancelled by ``close``
            (:class:`SinkClosedError`).
        rate_limit: At most this many requests per second (token bucket, burst of the
            same size), shared by all workers; records wait, they are not dropped.
            From 0.01 (one request per 100 s) to 1,000,000; ``None`` for no limit.
        circuit_breaker: A :class:`CircuitBreakerConfig` to stop sending to a URL
            that keeps failing.
        signing: A :class:`WebhookSigner` to sign every request per Standard Webhooks
            (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``); ``None`` signs nothing.
        tracing: Make every attempt an OpenTelemetry CLIENT span under the span current
            at ``put`` and send ``traceparent``; needs the ``otel`` extra (README, "Tracing").
    """

    urls: tuple[str, ...] = attrs.field(converter=_to_urls)
    max_workers: int = attrs.field(default=16, validator=_positive_int, kw_only=True)
    max_pending: int = attrs.field(default=10_000, validator=_positive_int, kw_only=True)
    when_full: Literal["block", "raise"] = attrs.field(
        default="block", validator=_one_of("block", "raise"), kw_only=True
    )
    put_timeout: float | None = attrs.field(default=None, validator=_optional(_non_negative), kw_only=True)
    connect_timeout: float = attrs.field(default=5.0, validator=_positive, kw_only=True)
    read_timeout: float = attrs.field(default=30.0, validator=_positive, kw_only=True)
    attempt_timeout: float | None = attrs.field(default=60.0, validator=_optional(_positive), kw_only=True)
    pool_maxsize: int = attrs.field(
        default=attrs.Factory(lambda self: self.max_workers, takes_self=True),
        validator=_positive_int,
        kw_only=True,
    )
    keep_alive: bool = attrs.field(default=True, validator=_boolean, kw_only=True)
    headers: Mapping[str, str] = attrs.field(
        factory=dict, converter=_to_headers, kw_only=True, eq=False, hash=False
    )
    method: str = attrs.field(default="POST", kw_only=True)
    max_response_bytes: int = attrs.field(default=65_536, validator=_non_negative_int, kw_only=True)
    max_body_bytes: int = attrs.field(default=10 * 1024 * 1024, validator=_positive_int, kw_only=True)
    retry: RetryConfig = attrs.field(factory=RetryConfig, kw_only=True)
    verify: bool = attrs.field(default=True, validator=_boolean, kw_only=True)
    ca_certs: str | None = attrs.field(default=None, kw_only=True)
    client_cert: str | tuple[str, str] | None = attrs.field(default=None, kw_only=True)
    sensitive_headers: frozenset[str] = attrs.field(
        default=DEFAULT_SENSITIVE_HEADERS, converter=_to_lower_set, kw_only=True
    )
    exit_timeout: float = attrs.field(default=5.0, validator=_non_negative, kw_only=True)
    # -- delivery options (see the README, "Delivery options"); their logic lives in strategies.py,
    # batching.py, encoding.py and request_options.py.
    delivery_strategy: Literal["round_robin", "broadcast", "failover"] = attrs.field(
        default="round_robin", validator=_one_of("round_robin", "broadcast", "failover"), kw_only=True
    )
    failover_threshold: int = attrs.field(default=3, validator=_positive_int, kw_only=True)
    failover_cooldown: float = attrs.field(default=30.0, validator=_non_negative, kw_only=True)
    batch: BatchConfig | None = attrs.field(
        default=None, validator=_optional(_instance_of(BatchConfig)), kw_only=True
    )
    encoding: Literal["json", "cloudevents-binary", "cloudevents-structured", "raw"] = attrs.field(
        default="json",
        validator=_one_of("json", "cloudevents-binary", "cloudevents-structured", "raw"),
        kw_only=True,
    )
    ce_source: str | None = attrs.field(default=None, validator=_optional(_non_empty_str), kw_only=True)
    ce_type: str | None = attrs.field(default=None, validator=_optional(_non_empty_str), kw_only=True)
    header_fn: Callable[[Any], Mapping[str, str]] | None = attrs.field(
        default=None, validator=_optional(_callable), kw_only=True, eq=False
    )
    auth: tuple[str, str] | None = attrs.field(default=None, kw_only=True)
    bearer_token: str | Callable[[], str] | None = attrs.field(default=None, kw_only=True, eq=False)
    compression: Literal["gzip"] | None = attrs.field(
        default=None, validator=_optional(_one_of("gzip")), kw_only=True
    )
    compress_min_bytes: int = attrs.field(default=1024, validator=_non_negative_int, kw_only=True)
    success_when: Callable[[int, Mapping[str, str], bytes], bool] | None = attrs.field(
        default=None, validator=_optional(_callable), kw_only=True, eq=False
    )

    @auth.validator
    def _check_auth(self, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        if not (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value)):
            raise ConfigError("auth", "must be a (user, password) tuple of str")
        if ":" in value[0]:
            raise ConfigError("auth", "the user name must not contain ':'")

    @bearer_token.validator
    def _check_bearer(self, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is None or callable(value):
            return
        if not isinstance(value, str) or not value:
            raise ConfigError("bearer_token", "must be a non-empty str or a callable returning one")
        check_header("Authorization", f"Bearer {value}", "bearer_token")

    # Outcome features (README, "Outcomes that outlive the process"); their logic lives
    # in result_store, dead_letter, ratelimit and breaker.
    result_store: ResultStoreConfig | None = attrs.field(
        default=None, validator=_optional(_instance_of(ResultStoreConfig)), kw_only=True
    )
    dead_letter: str | os.PathLike[str] | Callable[[dict[str, Any]], None] | None = attrs.field(
        default=None, validator=_optional(_dead_letter_target), kw_only=True
    )
    dead_letter_on_close: bool = attrs.field(default=False, validator=_boolean, kw_only=True)
    rate_limit: float | None = attrs.field(default=None, validator=_optional(_rate_limit), kw_only=True)
    circuit_breaker: CircuitBreakerConfig | None = attrs.field(
        default=None, validator=_optional(_instance_of(CircuitBreakerConfig)), kw_only=True
    )
    # Standard Webhooks signatures (README, "Signed webhooks"); the logic lives in signing.py.
    signing: WebhookSigner | None = attrs.field(default=None, kw_only=True)

    @signing.validator
    def _check_signing(self, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not isinstance(value, WebhookSigner):
            # Never repr the value: it may be the secret itself, given without the wrapper.
            raise ConfigError("signing", f"must be a WebhookSigner('whsec_...'), got {type(value).__name__}")
        if value is not None:
            for name in self.headers:
                if name.lower() in SIGNATURE_HEADERS:
                    raise ConfigError("headers", f"has {name!r}, which signing sets on every request")

    # OpenTelemetry (README, "Tracing"); the logic lives in tracing.py, which imports
    # opentelemetry only when this is True.
    tracing: bool = attrs.field(default=False, validator=_check_tracing, kw_only=True)

    @urls.validator
    def _check_urls(self, attr: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        if not value:
            raise ConfigError("urls", "at least one URL is required")
        for url in value:
            if not isinstance(url, str) or not url:
                raise ConfigError("urls", f"each URL must be a non-empty str, got {url!r}")
            shown = redact_url(url)  # the query string may hold the credential
            try:
                parsed = parse_url(url)
            except ValueError as exc:
                reason = redact_text(str(exc))
                raise ConfigError("urls", f"{shown!r} is not a valid URL: {reason}") from None
            if parsed.scheme not in ("http", "https"):
                raise ConfigError("urls", f"{shown!r}: scheme must be http or https, got {parsed.scheme!r}")
            if not parsed.host:
                raise ConfigError("urls", f"{shown!r} has no host")
            if parsed.auth:
                raise ConfigError(
                    "urls", f"{parsed.host}: credentials in the URL would be logged; use headers"
                )

    @headers.validator
    def _check_headers(self, attr: attrs.Attribute[Any], value: Mapping[str, str]) -> None:
        # The request header policy (framing names refused, one value per name) is wire/headers.py's.
        merge_headers({}, value, "headers")

    @method.validator
    def _check_method(self, attr: attrs.Attribute[Any], value: str) -> None:
        if not isinstance(value, str) or not _TOKEN.match(value):
            raise ConfigError("method", f"{value!r} is not an HTTP method token")

    @retry.validator
    def _check_retry(self, attr: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, RetryConfig):
            raise ConfigError("retry", f"must be a RetryConfig, got {type(value).__name__}")

    @client_cert.validator
    def _check_client_cert(self, attr: attrs.Attribute[Any], value: Any) -> None:
        if value is None or isinstance(value, str):
            return
        if not (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value)):
            raise ConfigError("client_cert", "must be a cert file path or a (cert_file, key_file) tuple")

    def __attrs_post_init__(self) -> None:
        if self.pool_maxsize < self.max_workers:
            # urllib3 pools block for a free connection: a smaller pool would park workers.
            raise ConfigError(
                "pool_maxsize", f"must be >= max_workers ({self.max_workers}), got {self.pool_maxsize}"
            )
        if self.ca_certs is not None and not self.verify:
            raise ConfigError("ca_certs", "is given but verify=False: drop one of them")
        self._check_delivery()

    def _check_delivery(self) -> None:
        if self.encoding.startswith("cloudevents"):
            for name in ("ce_source", "ce_type"):
                if getattr(self, name) is None:
                    raise ConfigError(name, f"is required with encoding={self.encoding!r}")
        if self.auth is not None and self.bearer_token is not None:
            raise ConfigError("auth", "and bearer_token are both given: choose one")
        if (self.auth is not None or self.bearer_token is not None) and any(
            k.lower() == "authorization" for k in self.headers
        ):
            raise ConfigError("headers", "has Authorization and auth/bearer_token is given: choose one")
        if self.batch is not None and self.header_fn is not None:
            raise ConfigError("header_fn", "cannot be combined with batch (one request carries many records)")
        if self.delivery_strategy == "failover" and len(self.urls) < 2:
            raise ConfigError("delivery_strategy", "'failover' needs at least two URLs")
        if self.batch is not None:
            # The gate sits in the per-record attempt; batches are sent without it.
            for name in ("rate_limit", "circuit_breaker"):
                if getattr(self, name) is not None:
                    raise ConfigError(name, "cannot be combined with batch (not supported yet)")

    def __repr__(self) -> str:
        # Header values and query strings may be credentials: the repr must be safe to log.
        parts = []
        for f in attrs.fields(type(self)):
            value = getattr(self, f.name)
            if f.name == "headers":
                value = {k: self.redact(k, v) for k, v in value.items()}
            elif f.name == "urls":
                value = tuple(redact_url(url) for url in value)
            elif f.name in ("auth", "bearer_token") and value is not None:
                value = "***"
            parts.append(f"{f.name}={value!r}")
        return f"HttpSinkConfig({', '.join(parts)})"

    def redact(self, name: str, value: str) -> str:
        """Return ``value``, or ``***`` when header ``name`` is sensitive."""
        return "***" if name.lower() in self.sensitive_headers else value
