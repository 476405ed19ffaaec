"""The exceptions the sink raises and reports.

Every delivery failure reaches the record's callback as a :class:`SinkError`
subclass whose ``__cause__`` is the original exception (urllib3's, requests',
or the socket's). Errors raised synchronously by :meth:`put` (bad record,
full queue, closed sink) and by configuration are ``SinkError`` too, and also
derive from the builtin a caller would naturally catch (``ValueError``,
``TypeError``), so ``except ValueError`` keeps working.

A message may name the URL of an attempt, and URLs often carry a credential in
their query string: every message is passed through
:func:`~eventmesh_http_sink.redact.redact_text` when the error is built, so
``str``, ``repr`` and log lines show ``?api_key=***``. The ``url``
attribute keeps the URL as configured, for code that routes on it.
"""

from __future__ import annotations

from typing import Any

from eventmesh_http_sink.redact import redact_text

__all__ = [
    "BatchRecordError",
    "BroadcastError",
    "BusinessError",
    "CircuitOpenError",
    "ConfigError",
    "ConnectTimeoutError",
    "EndpointUnavailableError",
    "HttpStatusError",
    "InvalidRecordError",
    "QueueFullError",
    "ReadTimeoutError",
    "RecordEncodingError",
    "ResponseError",
    "SinkClosedError",
    "SinkError",
    "UnknownOptionError",
]


class SinkError(Exception):
    """Base class of every error the sink raises or reports.

    Attributes:
        url: The URL of the attempt that failed, when there was one.
        status: The HTTP status received, or ``None`` when no response was read.
        retryable: Whether a later attempt could succeed. The retry policy has the
            last word for HTTP statuses (see :class:`RetryConfig`).
    """

    retryable: bool = False

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None) -> None:
        message = redact_text(message)  # one place for every message built anywhere
        super().__init__(message)
        self.message = message
        self.url = url
        self.status = status

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments would be lost by the default pickling, and errors
        # cross process boundaries in Celery results and multiprocessing.
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[SinkError], message: str, state: dict[str, object]) -> SinkError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class ConfigError(SinkError, ValueError):
    """A configuration value is invalid; the message names the field.

    Attributes:
        field: The option's name (``batch.max_records`` for a nested config).
        reason: What is wrong with it (the message without the field name).
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = redact_text(reason)


class UnknownOptionError(ConfigError, TypeError):
    """A config class was given an option it does not have (a misspelt keyword).

    Also a ``TypeError``, which Python raises for an unexpected keyword argument,
    so code written against that keeps working.
    """


class InvalidRecordError(SinkError, ValueError):
    """A record was refused by :meth:`put`; nothing was queued or sent."""

    def __init__(self, record_id: str | None, reason: str) -> None:
        super().__init__(f"record {record_id!r}: {reason}")
        self.record_id = record_id


class RecordEncodingError(InvalidRecordError, TypeError):
    """A record's data or extensions cannot be encoded (unsupported type)."""


class QueueFullError(SinkError):
    """``max_pending`` records are already pending and ``put`` may not wait longer.

    Attributes:
        accepted: From ``put_all``, the Futures of the records accepted before this one.
    """

    accepted: list[Any] = []  # noqa: RUF012 - replaced per instance, never mutated


class SinkClosedError(SinkError):
    """The connector is closed: the record was refused or cancelled at close.

    Attributes:
        accepted: From ``put_all``, the Futures of the records accepted before this one.
    """

    accepted: list[Any] = []  # noqa: RUF012 - replaced per instance, never mutated


class HttpStatusError(SinkError):
    """The endpoint answered with a status outside 2xx.

    Attributes:
        status: The HTTP status code.
        body: The start of the response body (at most ``max_response_bytes``).
        location: The ``Location`` header of a redirect, which is never followed.
    """

    status: int

    def __init__(
        self,
        status: int,
        *,
        url: str | None = None,
        reason: str = "",
        body: bytes = b"",
        location: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        text = f"HTTP {status}" + (f" {reason}" if reason else "")
        if location:
            text += f" (redirect to {location} not followed)"
        if url:
            text += f" from {url}"
        super().__init__(text, url=url, status=status)
        self.body = body
        self.location = location
        self.retry_after = retry_after


class BusinessError(SinkError):
    """A 2xx response whose content the ``success_when`` predicate rejected."""


class BroadcastError(SinkError):
    """A broadcast record failed on at least one URL.

    Attributes:
        errors: Each failed URL and its final error.
        per_url: Each URL's last HTTP status (``None`` where no response was read).
    """

    def __init__(self, errors: dict[str, SinkError], per_url: dict[str, int | None]) -> None:
        detail = "; ".join(f"{url}: {err}" for url, err in errors.items())
        super().__init__(f"broadcast failed on {len(errors)} of {len(per_url)} URL(s): {detail}")
        self.errors = errors
        self.per_url = per_url


class BatchRecordError(SinkError):
    """The batch's ``result_parser`` reported this record as failed; retried on its own."""

    retryable = True


class _TransientError(SinkError):
    retryable = True


class EndpointUnavailableError(_TransientError):
    """The endpoint could not be reached: refused, unresolvable, TLS failure."""


class ConnectTimeoutError(_TransientError, TimeoutError):
    """No connection was established within ``connect_timeout``."""


class ReadTimeoutError(_TransientError, TimeoutError):
    """The response did not arrive within ``read_timeout`` (or ``attempt_timeout``)."""


class ResponseError(_TransientError):
    """The response was unreadable: reset, truncated, or not HTTP."""


class CircuitOpenError(SinkError):
    """The circuit breaker of the record's URL is open and ``when_open="fail"``.

    The record was not sent; no attempt was made to that URL.
    """
