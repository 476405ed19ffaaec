"""What a record's callback is told: EventMesh's ``SendMessageCallback`` contract."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import attrs

from .errors import SinkError
from .redact import redact_url

__all__ = ["SendExceptionContext", "SendMessageCallback", "SendResult"]


@attrs.frozen(repr=False, init=False)
class SendResult:
    """A record was delivered: the endpoint answered 2xx.

    Attributes:
        record_id: The record's id (also its ``Idempotency-Key``).
        topic: ``extensions["topic"]`` or ``None``.
        url: The URL that accepted it (``None`` for a broadcast; see ``per_url``).
        status: The HTTP status of the successful attempt.
        attempts: How many attempts it took; the first try counts as 1.
        elapsed: Seconds from ``put`` to the outcome.
        response_body: The start of the response body, at most ``max_response_bytes``.
        per_url: For a broadcast, each URL's status; otherwise ``None``.
    """

    record_id: str
    topic: str | None
    url: str | None
    status: int
    attempts: int
    elapsed: float
    response_body: bytes = b""
    per_url: Mapping[str, int] | None = None

    def __init__(  # noqa: PLR0917 - attrs' own signature: callers pass the fields positionally
        self,
        record_id: str,
        topic: str | None,
        url: str | None,
        status: int,
        attempts: int,
        elapsed: float,
        response_body: bytes = b"",
        per_url: Mapping[str, int] | None = None,
    ) -> None:
        # The __init__ attrs would write, minus its cost: attrs sets a frozen class's
        # fields with one object.__setattr__ call each (a type lookup per field); the
        # slots' own setters, bound once below, cost a fifth less per SendResult, and
        # one is made for every delivered record. Same fields, order and defaults.
        _set_record_id(self, record_id)
        _set_topic(self, topic)
        _set_url(self, url)
        _set_status(self, status)
        _set_attempts(self, attempts)
        _set_elapsed(self, elapsed)
        _set_response_body(self, response_body)
        _set_per_url(self, per_url)

    def __repr__(self) -> str:
        return (
            f"SendResult(record_id={self.record_id!r}, topic={self.topic!r}, url={_shown(self.url)!r}, "
            f"status={self.status}, attempts={self.attempts}, elapsed={self.elapsed:.3f}, "
            f"response_body=<{len(self.response_body)} bytes>)"
        )


# The slot descriptors' setters of SendResult's fields, in field order (tests/test_outcome_ledger.py
# checks the order against attrs.fields: a swap would put a value in the wrong field).
(
    _set_record_id,
    _set_topic,
    _set_url,
    _set_status,
    _set_attempts,
    _set_elapsed,
    _set_response_body,
    _set_per_url,
) = (SendResult.__dict__[field.name].__set__ for field in attrs.fields(SendResult))


def _shown(url: str | None) -> str | None:
    # The attribute keeps the URL as configured; a repr must be safe to log.
    return None if url is None else redact_url(url)


@attrs.frozen(repr=False)
class SendExceptionContext:
    """A record finally failed, or was cancelled at close.

    Attributes:
        record_id: The record's id.
        topic: ``extensions["topic"]`` or ``None``.
        url: The URL of the last attempt, or ``None`` when none was made.
        error: The :class:`SinkError` (its ``__cause__`` is the original exception);
            the record's Future raises this same object.
        attempts: How many attempts were made (0 when cancelled before the first).
        elapsed: Seconds from ``put`` to the outcome.
        status: The HTTP status of the last response, or ``None``.
    """

    record_id: str
    topic: str | None
    url: str | None
    error: SinkError
    attempts: int
    elapsed: float
    status: int | None = None

    def __repr__(self) -> str:
        return (
            f"SendExceptionContext(record_id={self.record_id!r}, topic={self.topic!r}, "
            f"url={_shown(self.url)!r}, error={self.error!r}, attempts={self.attempts}, "
            f"elapsed={self.elapsed:.3f}, status={self.status})"
        )


@runtime_checkable
class SendMessageCallback(Protocol):
    """What a record's ``callback`` must provide. Any object with these methods works.

    Exactly one of the two is called per accepted record, in the thread that
    resolved the record's Future and in the ``contextvars`` context of the
    ``put`` call. An exception raised here is logged and counted, never
    propagated.
    """

    def on_success(self, result: SendResult) -> None:
        """Called once after a 2xx response."""

    def on_exception(self, context: SendExceptionContext) -> None:
        """Called once after the final failure or cancellation."""
