"""Per-request options: encoding, per-record headers, auth, gzip, ``success_when``.

:meth:`RequestOptions.prepare` runs in the caller's thread from ``put`` (so a bad
header or record fails there); :meth:`RequestOptions.send` wraps one transport
call in a worker thread (bearer token, one retry after a 401 with a refreshed
token, the ``success_when`` check).
"""

from __future__ import annotations

import base64
import gzip
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from eventmesh_http_sink import forksafe
from eventmesh_http_sink.dispatch.batching import batch_item
from eventmesh_http_sink.errors import (
    BusinessError,
    ConfigError,
    HttpStatusError,
    InvalidRecordError,
    SinkError,
)
from eventmesh_http_sink.records import ConnectRecord
from eventmesh_http_sink.scheduling.retry import parse_retry_after
from eventmesh_http_sink.wire.encoding import cloudevent_structured, make_encoder
from eventmesh_http_sink.wire.headers import check_header, merge_headers

if TYPE_CHECKING:
    from eventmesh_http_sink.config import HttpSinkConfig
    from eventmesh_http_sink.wire.transport import Response, Transport

__all__ = ["BearerToken", "RequestOptions", "status_error"]


class BearerToken:
    """A bearer token, static or fetched from a callable and refreshed after a 401.

    The token itself never appears in a message, log line or repr.
    """

    def __init__(self, source: str | Callable[[], str]) -> None:
        self._source = source
        self._token: str | None = None if callable(source) else source
        self._lock = threading.Lock()
        forksafe.register(self)

    def after_fork_in_child(self) -> None:
        """A parent worker may have been fetching the token (holding the lock) at the fork."""
        forksafe.reinit(self._lock)

    def __repr__(self) -> str:
        return "<BearerToken ***>"

    @property
    def refreshable(self) -> bool:
        """Whether a 401 can be answered with a new token."""
        return callable(self._source)

    def current(self) -> str:
        """The token to send (fetched on first use)."""
        token = self._token
        if token is None:
            with self._lock:
                if self._token is None:
                    self._token = self._fetch()
                token = self._token
        return token

    def refresh(self, stale: str) -> str:
        """A new token, fetched once however many workers saw the same 401."""
        with self._lock:
            if self._token == stale:
                self._token = self._fetch()
            return self._token or stale

    def _fetch(self) -> str:
        source = self._source
        try:
            token = source() if callable(source) else source
        except Exception as exc:
            err = SinkError(f"bearer_token callable raised {type(exc).__name__}")
            err.retryable = True  # a token endpoint that is down may come back
            raise err from exc
        try:
            if not isinstance(token, str) or not token:
                raise ConfigError("bearer_token", "the callable must return a non-empty str")
            check_header("Authorization", f"Bearer {token}", "bearer_token")
        except ConfigError as exc:
            raise SinkError(str(exc)) from None  # never chain: the message must not carry the token
        return token


def status_error(response: Response, url: str) -> HttpStatusError:
    """The :class:`HttpStatusError` for a non-2xx response (as the core builds it)."""
    status = response.status
    headers = response.headers
    return HttpStatusError(
        status,
        url=url,
        reason=response.reason,
        body=response.body,
        location=headers.get("Location") if 300 <= status < 400 else None,
        retry_after=parse_retry_after(headers.get("Retry-After")),
    )


class RequestOptions:
    """The request options of one connector, built once from its config."""

    def __init__(self, config: HttpSinkConfig) -> None:
        self._config = config
        self._encoder = make_encoder(config)
        self._header_fn = config.header_fn
        self._batching = config.batch is not None
        self._ce = config.encoding.startswith("cloudevents")
        self._gzip_min = config.compress_min_bytes if config.compression == "gzip" else None
        self._success_when = config.success_when
        self._retry_business = config.retry.retry_business_errors
        self._basic: str | None = None
        if config.auth is not None:
            user, password = config.auth
            raw = f"{user}:{password}".encode()
            self._basic = "Basic " + base64.b64encode(raw).decode("ascii")
        self._token = BearerToken(config.bearer_token) if config.bearer_token is not None else None
        # Nothing to do per attempt: the worker calls the transport directly.
        self.passthrough = self._token is None and self._success_when is None

    @property
    def active(self) -> bool:
        """Whether :meth:`prepare` changes anything."""
        return (
            self._encoder is not None
            or self._header_fn is not None
            or self._basic is not None
            or self._gzip_min is not None
            or self._batching
        )

    def prepare(self, record: ConnectRecord, body: bytes, headers: dict[str, str]) -> tuple[bytes, bytes]:
        """Encode and decorate one record in the caller's thread.

        Returns:
            ``(body, batch_item)``; the batch item is ``b""`` without batching.

        Raises:
            InvalidRecordError: naming the record, for a bad header or CloudEvent.
        """
        rid = record.record_id
        if self._batching:
            # Only the batch element is sent; auth and gzip apply to the batch request.
            if self._ce:
                return body, cloudevent_structured(record, body, headers, self._config)
            return body, batch_item(rid, body, headers.get("Content-Type", ""))
        if self._encoder is not None:
            body = self._encoder(record, body, headers)
        if self._header_fn is not None:
            self._apply_header_fn(record, headers)
        if self._basic is not None:
            headers["Authorization"] = self._basic
        if self._gzip_min is not None:
            body = self.compress(body, headers)
        return body, b""

    def _apply_header_fn(self, record: ConnectRecord, headers: dict[str, str]) -> None:
        rid = record.record_id
        header_fn = self._header_fn
        if header_fn is None:
            return
        try:
            extra = header_fn(record)
        except Exception as exc:
            raise InvalidRecordError(rid, f"header_fn raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(extra, Mapping):
            raise InvalidRecordError(rid, f"header_fn must return a mapping, got {type(extra).__name__}")
        try:
            # Refuses framing headers; a name given in any case replaces the library's value.
            merge_headers(headers, extra, "header_fn")
        except ConfigError as exc:
            raise InvalidRecordError(rid, exc.message) from None

    def compress(self, body: bytes, headers: dict[str, str]) -> bytes:
        """Gzip ``body`` (setting ``Content-Encoding``) when it reaches ``compress_min_bytes``."""
        if self._gzip_min is None or len(body) < self._gzip_min:
            return body
        headers["Content-Encoding"] = "gzip"
        return gzip.compress(body, compresslevel=6, mtime=0)

    def batch_headers(self, headers: dict[str, str]) -> dict[str, str]:
        """Add the per-connector auth header to a batch request's headers."""
        if self._basic is not None:
            headers["Authorization"] = self._basic
        return headers

    def send(
        self, transport: Transport, method: str, url: str, body: bytes, headers: Mapping[str, str]
    ) -> Response:
        """One attempt with the bearer token and the ``success_when`` check.

        Raises:
            SinkError: from the transport, or :class:`BusinessError` when
                ``success_when`` rejects a 2xx response.
        """
        token = self._token
        if token is None:
            response = transport.send(method, url, body, headers)
        else:
            used = token.current()
            response = transport.send(method, url, body, {**headers, "Authorization": f"Bearer {used}"})
            if response.status == 401 and token.refreshable:
                fresh = token.refresh(used)
                response = transport.send(method, url, body, {**headers, "Authorization": f"Bearer {fresh}"})
        if self._success_when is not None and 200 <= response.status < 300:
            self._check_success(url, response)
        return response

    def _check_success(self, url: str, response: Response) -> None:
        success_when = self._success_when
        if success_when is None:
            return
        cause: BaseException | None = None
        try:
            ok = bool(success_when(response.status, response.headers, response.body))
        except Exception as exc:
            ok, cause = False, exc
        if ok:
            return
        why = f"success_when raised {type(cause).__name__}" if cause else "success_when said no"
        err = BusinessError(
            f"HTTP {response.status} from {url} is a failure: {why}", url=url, status=response.status
        )
        err.body = response.body  # type: ignore[attr-defined]
        err.retryable = self._retry_business
        raise err from cause
