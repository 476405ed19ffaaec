"""How one HTTP attempt is made: the transport seam.

A transport turns ``(method, url, body, headers)`` into a :class:`Response`, or
raises a :class:`SinkError` subclass whose ``__cause__`` is the library's own
exception. It never retries and never follows redirects: retrying is the
connector's job (it must not park a worker), and a redirect could carry
credentials to another host.

:class:`Urllib3Transport` (the default) keeps one urllib3 connection pool per
host and calls ``pool.urlopen`` directly with the request path precomputed, so
no URL is parsed and no ``Retry`` object is built per request.
:class:`RequestsTransport` wraps a caller's ``requests.Session`` for those who
need its auth, proxies or adapters.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import urllib3
from urllib3 import exceptions as u3e
from urllib3.connection import HTTPConnection
from urllib3.util import parse_url

from eventmesh_http_sink.errors import (
    ConnectTimeoutError,
    EndpointUnavailableError,
    ReadTimeoutError,
    ResponseError,
    SinkError,
)
from eventmesh_http_sink.wire.fastpath import send_plain

if TYPE_CHECKING:
    import requests

    from eventmesh_http_sink.config import HttpSinkConfig

__all__ = ["RequestsTransport", "Response", "Transport", "Urllib3Transport"]

_log = logging.getLogger("eventmesh_http_sink")

_CHUNK = 64 * 1024
# A body larger than this past ``max_response_bytes`` is not drained: the
# connection is closed instead (an endless stream must not hold a worker).
_DRAIN_LIMIT = 1024 * 1024


@attrs.frozen(slots=True)
class Response:
    """The part of an HTTP response the connector uses.

    Attributes:
        status: The status code.
        reason: The reason phrase (may be empty).
        headers: The response headers (case-insensitive mapping).
        body: At most ``max_response_bytes`` of the body.
    """

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes


class Transport(Protocol):
    """The minimal interface the connector needs to send one attempt."""

    def send(self, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """Make one attempt; raise a :class:`SinkError` subclass on failure."""

    def close(self) -> None:
        """Release idle connections; in-flight requests may finish."""

    def abort(self) -> None:
        """Unblock in-flight requests (their attempts fail) and release everything."""


def map_urllib3_error(exc: BaseException, url: str) -> SinkError:
    """Classify a urllib3 (or socket) exception as the sink's error, cause attached."""
    err: SinkError
    # Order matters: NewConnectionError subclasses ConnectTimeoutError in urllib3 2.x.
    if isinstance(exc, u3e.NewConnectionError):
        err = EndpointUnavailableError(f"cannot connect to {url}: {_reason(exc)}", url=url)
    elif isinstance(exc, u3e.ConnectTimeoutError):
        err = ConnectTimeoutError(f"connect to {url} timed out", url=url)
    elif isinstance(exc, u3e.ReadTimeoutError):
        err = ReadTimeoutError(f"read from {url} timed out", url=url)
    elif isinstance(exc, u3e.SSLError):
        err = EndpointUnavailableError(f"TLS failure with {url}: {_reason(exc)}", url=url)
        # A certificate that does not verify will not verify on the next try either.
        err.retryable = "CERTIFICATE_VERIFY_FAILED" not in str(exc) and "hostname" not in str(exc)
    elif isinstance(exc, u3e.ProxyError):
        err = EndpointUnavailableError(f"proxy failure for {url}: {_reason(exc)}", url=url)
    elif isinstance(exc, (u3e.ProtocolError, u3e.DecodeError, u3e.HTTPError)):
        err = ResponseError(f"unreadable response from {url}: {_reason(exc)}", url=url)
    elif isinstance(exc, TimeoutError):
        err = ReadTimeoutError(f"read from {url} timed out", url=url)
    elif isinstance(exc, OSError):
        err = ResponseError(f"connection error with {url}: {_reason(exc)}", url=url)
    else:
        return SinkError(f"unexpected {type(exc).__name__} sending to {url}: {exc}", url=url)
    err.__cause__ = exc
    return err


def _reason(exc: BaseException) -> str:
    # urllib3 nests the socket error; its innermost message is the useful one.
    inner = exc.args[-1] if exc.args and isinstance(exc.args[-1], BaseException) else None
    text = str(inner or exc)[:300]
    # Garbage from a broken server must not put control characters into log lines.
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _read_capped(read: Any, url: str, keep: int, deadline: float | None) -> tuple[bytes, bool]:
    """Read ``keep`` bytes, then drain up to ``_DRAIN_LIMIT``.

    Returns the kept bytes and whether the body was read to its end (only then
    may the connection be reused). Raises :class:`ReadTimeoutError` past the
    attempt's deadline, so a server trickling bytes cannot hold a worker.
    """
    kept = bytearray()
    drained = 0
    while True:
        chunk = read(_CHUNK)
        if not chunk:
            return bytes(kept), True
        room = keep - len(kept)
        if room > 0:
            kept += chunk[:room]
        drained += max(0, len(chunk) - max(room, 0))
        if deadline is not None and time.monotonic() > deadline:
            raise ReadTimeoutError(f"attempt_timeout exceeded reading the body from {url}", url=url)
        if drained > _DRAIN_LIMIT:
            return bytes(kept), False


class _TrackedPoolMixin:
    """Remembers every connection it makes, so :meth:`abort` can shut their sockets."""

    _tracked: weakref.WeakSet[HTTPConnection]

    def _new_conn(self) -> HTTPConnection:
        conn: HTTPConnection = super()._new_conn()  # type: ignore[misc]
        self._tracked.add(conn)
        return conn


class _HTTPPool(_TrackedPoolMixin, urllib3.HTTPConnectionPool):
    pass


class _HTTPSPool(_TrackedPoolMixin, urllib3.HTTPSConnectionPool):  # type: ignore[misc]
    pass


class Urllib3Transport:
    """The default transport: one blocking urllib3 pool per host.

    At most ``pool_maxsize`` connections are open to one host (the pool blocks
    for a free one), connections are kept alive and reused, and the configured
    timeouts apply to every attempt.
    """

    _insecure_warned = False

    def __init__(self, config: HttpSinkConfig) -> None:
        self._config = config
        self._keep = config.max_response_bytes
        self._attempt_timeout = config.attempt_timeout
        self._timeout = urllib3.Timeout(
            connect=config.connect_timeout, read=config.read_timeout, total=config.attempt_timeout
        )
        self._pools: dict[tuple[str, str, int], _HTTPPool | _HTTPSPool] = {}
        # url -> (pool, path with query): resolved once, so a request parses nothing.
        self._targets: dict[str, tuple[_HTTPPool | _HTTPSPool, str]] = {}
        self._lock = threading.Lock()
        # Plain-HTTP pools send through fastpath.send_plain (see there), unless a
        # configured Host header must replace the computed one.
        self._plain: dict[str, str] = {}  # url -> Host header, for http:// targets
        self._fast = not any(name.lower() == "host" for name in config.headers)
        for url in config.urls:
            self._target(url)
        if not config.verify and not Urllib3Transport._insecure_warned:
            Urllib3Transport._insecure_warned = True
            _log.warning("TLS certificate verification is disabled (verify=False)")

    def _target(self, url: str) -> tuple[_HTTPPool | _HTTPSPool, str]:
        target = self._targets.get(url)
        if target is not None:
            return target
        parsed = parse_url(url)
        scheme = parsed.scheme or "http"
        host = parsed.host or ""
        port = parsed.port or (443 if scheme == "https" else 80)
        with self._lock:
            pool = self._pools.get((scheme, host, port))
            if pool is None:
                pool = self._pools[(scheme, host, port)] = self._new_pool(scheme, host, port)
            target = self._targets[url] = (pool, parsed.request_uri)
            if scheme == "http" and self._fast:
                self._plain[url] = host if port == 80 else f"{host}:{port}"
        return target

    def _new_pool(self, scheme: str, host: str, port: int) -> _HTTPPool | _HTTPSPool:
        cfg = self._config
        kwargs: dict[str, Any] = {
            "maxsize": cfg.pool_maxsize,
            "block": True,
            "timeout": self._timeout,
            "retries": False,
        }
        pool: _HTTPPool | _HTTPSPool
        if scheme == "https":
            cert: Any = cfg.client_cert
            cert_file, key_file = (cert, None) if isinstance(cert, str) else (cert or (None, None))
            pool = _HTTPSPool(
                host,
                port,
                cert_reqs="CERT_REQUIRED" if cfg.verify else "CERT_NONE",
                ca_certs=cfg.ca_certs,
                cert_file=cert_file,
                key_file=key_file,
                assert_hostname=None if cfg.verify else False,
                **kwargs,
            )
        else:
            pool = _HTTPPool(host, port, **kwargs)
        pool._tracked = weakref.WeakSet()
        return pool

    def send(self, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """Make one attempt. See :class:`Transport`."""
        pool, path = self._targets.get(url) or self._target(url)
        deadline = None if self._attempt_timeout is None else time.monotonic() + self._attempt_timeout
        host_header = self._plain.get(url)
        if host_header is not None:
            cfg = self._config
            try:
                status, reason, rheaders, data = send_plain(
                    pool,
                    host_header,
                    method,
                    path,
                    url,
                    body,
                    headers,
                    connect_timeout=cfg.connect_timeout,
                    read_timeout=cfg.read_timeout,
                    deadline=deadline,
                    keep=self._keep,
                    drain_limit=_DRAIN_LIMIT,
                )
            except SinkError:
                raise
            except Exception as exc:
                raise map_urllib3_error(exc, url) from exc
            return Response(status, reason, rheaders, data)
        try:
            resp = pool.urlopen(
                method,
                path,
                body=body,
                headers=headers,
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                release_conn=False,
            )
        except Exception as exc:
            raise map_urllib3_error(exc, url) from exc
        reusable = False
        try:
            data, reusable = _read_capped(resp.read1, url, self._keep, deadline)
            return Response(resp.status, resp.reason or "", resp.headers, data)
        except SinkError:
            raise
        except Exception as exc:
            raise map_urllib3_error(exc, url) from exc
        finally:
            if not reusable:
                resp.close()  # never hand a half-read connection to the next request
            resp.release_conn()

    def close(self) -> None:
        """Close idle connections of every pool."""
        for pool in list(self._pools.values()):
            pool.close()

    def abort(self) -> None:
        """Shut every open socket (unblocking in-flight reads), then close the pools."""
        for pool in list(self._pools.values()):
            for conn in list(pool._tracked):
                sock = getattr(conn, "sock", None)
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass  # already closed: nothing to unblock
        self.close()


class RequestsTransport:
    """Sends through a caller's ``requests.Session`` (its auth, proxies, adapters).

    Timeouts, TLS settings, no-redirect and the response cap still come from the
    connector's config. The session is the caller's: :meth:`close` leaves it open.
    """

    def __init__(self, session: requests.Session, config: HttpSinkConfig) -> None:
        self._session = session
        self._timeout = (config.connect_timeout, config.read_timeout)
        self._keep = config.max_response_bytes
        self._attempt_timeout = config.attempt_timeout
        self._verify: bool | str = config.ca_certs if config.ca_certs else config.verify
        self._cert = config.client_cert

    def send(self, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """Make one attempt. See :class:`Transport`."""
        import requests

        deadline = None if self._attempt_timeout is None else time.monotonic() + self._attempt_timeout
        try:
            resp = self._session.request(
                method,
                url,
                data=body,
                headers=dict(headers),
                timeout=self._timeout,
                allow_redirects=False,
                stream=True,
                verify=self._verify,
                cert=self._cert,
            )
        except requests.RequestException as exc:
            raise _map_requests_error(exc, url) from exc
        try:
            data, _ = _read_capped(
                lambda n: resp.raw.read1(n, decode_content=True), url, self._keep, deadline
            )
            return Response(resp.status_code, resp.reason or "", resp.headers, data)
        except SinkError:
            raise
        except Exception as exc:
            raise map_urllib3_error(exc, url) from exc
        finally:
            resp.close()

    def close(self) -> None:
        """Nothing to do: the session belongs to the caller."""

    def abort(self) -> None:
        """Close the session's adapters so idle connections go; in-flight ones finish."""
        self._session.close()


# Pool managers a forked child replaced: kept, never collected, so the child
# neither closes nor reuses the parent's sockets.
_INHERITED_POOLS: list[object] = []


def reset_session_pools_after_fork(session: requests.Session) -> None:
    """Give a ``requests.Session`` inherited through ``fork()`` fresh connection pools.

    Its adapters' pools hold the parent's sockets; a child that used them would
    interleave its requests with the parent's on the same connections. Each
    ``HTTPAdapter`` gets a new pool manager built as before (subclasses that
    customise ``init_poolmanager`` keep their settings).
    """
    from requests.adapters import HTTPAdapter

    for adapter in session.adapters.values():
        if isinstance(adapter, HTTPAdapter):
            _INHERITED_POOLS.append(adapter.poolmanager)
            _INHERITED_POOLS.append(adapter.proxy_manager)
            adapter.init_poolmanager(
                adapter._pool_connections,  # type: ignore[attr-defined]
                adapter._pool_maxsize,  # type: ignore[attr-defined]
                block=adapter._pool_block,  # type: ignore[attr-defined]
            )
            adapter.proxy_manager = {}


def _map_requests_error(exc: Exception, url: str) -> SinkError:
    import requests

    if isinstance(exc, requests.ConnectTimeout):
        err: SinkError = ConnectTimeoutError(f"connect to {url} timed out", url=url)
    elif isinstance(exc, requests.ReadTimeout):
        err = ReadTimeoutError(f"read from {url} timed out", url=url)
    elif isinstance(exc, requests.exceptions.SSLError):
        err = EndpointUnavailableError(f"TLS failure with {url}: {exc}", url=url)
        err.retryable = False
    elif isinstance(exc, requests.ConnectionError):
        inner = exc.args[0] if exc.args else None
        reason = getattr(inner, "reason", inner)
        if isinstance(inner, u3e.ProtocolError) or isinstance(reason, u3e.ProtocolError):
            err = ResponseError(f"unreadable response from {url}: {exc}", url=url)
        else:
            err = EndpointUnavailableError(f"cannot connect to {url}: {exc}", url=url)
    else:
        err = ResponseError(f"request to {url} failed: {exc}", url=url)
    err.__cause__ = exc
    return err
