"""How one HTTP attempt is made: the transport seam.

A transport turns ``(method, url, body, headers)`` into a :class:`Response`, or
raises a :class:`SinkError` subclass whose ``__cause__`` is the library's own
exception. It never retries (but see :class:`Urllib3Transport` on stale
keep-alive connections) and never follows redirects: retrying is the
connector's job (it must not park a worker), and a redirect could carry
credentials to another host.

:class:`Urllib3Transport` (the default) keeps the connections of each host in a
:class:`.pool_access.Connections`; urllib3 makes and connects them (TLS
included), and the request and response go through
:mod:`.http11` (llhttp), the same code for http and https.
:class:`RequestsTransport` wraps a caller's ``requests.Session`` for those who
need its auth, proxies or adapters (``urlopen`` under it).
"""

from __future__ import annotations

import codecs
import importlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import urllib3
from urllib3 import exceptions as u3e
from urllib3.util import parse_url

from eventmesh_http_sink.errors import (
    ConnectTimeoutError,
    EndpointUnavailableError,
    ReadTimeoutError,
    ResponseError,
    SinkError,
)
from eventmesh_http_sink.wire.body import DRAIN_LIMIT, decode, read_capped
from eventmesh_http_sink.wire.headers import RequestHeads
from eventmesh_http_sink.wire.http11 import NoResponse, exchange
from eventmesh_http_sink.wire.pool_access import Connections, connect

if TYPE_CHECKING:
    import requests

    from eventmesh_http_sink.config import HttpSinkConfig

__all__ = ["RequestsTransport", "Response", "Transport", "Urllib3Transport"]

_log = logging.getLogger("eventmesh_http_sink")

# socket.getaddrinfo encodes a str host with the "idna" codec, whose module
# (encodings.idna, with stringprep) is imported on first use: by a worker thread,
# on the first connection. A process forked in the middle of that import gets the
# module half made and its import lock held by a thread it does not have: every
# connection of the child then fails with "LookupError: unknown encoding: idna"
# or blocks forever. Looking the codec up here, at import, caches it before any
# worker thread exists. (tests/test_fork.py traces what a first connection imports.)
codecs.lookup("idna")


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
    """The minimal interface the connector needs to send one attempt.

    A transport may also have a ``reconnects`` attribute (an int, as
    :class:`Urllib3Transport` does); ``stats().reconnects`` reports it.
    """

    def send(self, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """Make one attempt; raise a :class:`SinkError` subclass on failure."""

    def close(self) -> None:
        """Release idle connections; in-flight requests may finish."""

    def abort(self) -> None:
        """Unblock in-flight requests (their attempts fail) and release everything."""


def map_urllib3_error(exc: BaseException, url: str) -> SinkError:
    """Classify a urllib3 (or socket) exception as the sink's error, cause attached.

    Messages name ``url`` as given: :class:`SinkError` redacts its query values
    (and any in the library's text) when the error is built.
    """
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


class Urllib3Transport:
    """The default transport: a bounded set of kept-alive connections per host, the exchange by llhttp.

    At most ``pool_maxsize`` connections are open to one host (the pool blocks
    for a free one), connections are kept alive and reused, and the configured
    timeouts apply to every attempt. urllib3 connects, does the TLS handshake
    and verifies the certificate; the request is written in one ``sendall`` and
    the response read by :func:`.http11.exchange`, the same code for http and
    https.

    A request that fails on a *reused* connection before any byte of a response
    arrived (reset, EOF, broken pipe: the server closed the idle connection as
    the request went out) is sent again at once on a fresh connection, once,
    within the same attempt; :attr:`reconnects` counts these.
    """

    _insecure_warned = False

    def __init__(self, config: HttpSinkConfig) -> None:
        self._config = config
        self._keep = config.max_response_bytes
        self._attempt_timeout = config.attempt_timeout
        self._connect_timeout = config.connect_timeout
        self._read_timeout = config.read_timeout
        self._close = not config.keep_alive
        self._heads = RequestHeads()
        self._pools: dict[tuple[str, str, int], Connections] = {}
        # url -> (pool, path with query, Host header): resolved once, so a request parses nothing.
        self._targets: dict[str, tuple[Connections, str, str]] = {}
        self._lock = threading.Lock()
        # Connections out of their pool right now, for abort(); set add/discard are atomic.
        self._busy: set[Any] = set()
        self._reconnects = 0
        self._aborted = False  # abort() was called: no request is written any more
        for url in config.urls:
            self._target(url)
        if not config.verify and not Urllib3Transport._insecure_warned:
            Urllib3Transport._insecure_warned = True
            _log.warning("TLS certificate verification is disabled (verify=False)")

    @property
    def reconnects(self) -> int:
        """Requests sent again on a fresh connection after a stale keep-alive one failed."""
        return self._reconnects

    def _target(self, url: str) -> tuple[Connections, str, str]:
        target = self._targets.get(url)
        if target is not None:
            return target
        parsed = parse_url(url)
        scheme = parsed.scheme or "http"
        host = parsed.host or ""
        port = parsed.port or (443 if scheme == "https" else 80)
        default_port = port == (443 if scheme == "https" else 80)
        with self._lock:
            pool = self._pools.get((scheme, host, port))
            if pool is None:
                pool = self._pools[(scheme, host, port)] = Connections(
                    self._new_pool(scheme, host, port), self._config.pool_maxsize
                )
            target = (pool, parsed.request_uri, host if default_port else f"{host}:{port}")
            self._targets[url] = target
        return target

    def _new_pool(self, scheme: str, host: str, port: int) -> urllib3.HTTPConnectionPool:
        cfg = self._config
        # The pool makes connections (its settings: host, TLS, timeouts); Connections keeps them.
        kwargs: dict[str, Any] = {
            "maxsize": cfg.pool_maxsize,
            "block": True,
            "timeout": urllib3.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout),
            "retries": False,
        }
        if scheme == "https":
            cert: Any = cfg.client_cert
            cert_file, key_file = (cert, None) if isinstance(cert, str) else (cert or (None, None))
            return urllib3.HTTPSConnectionPool(
                host,
                port,
                cert_reqs="CERT_REQUIRED" if cfg.verify else "CERT_NONE",
                ca_certs=cfg.ca_certs,
                cert_file=cert_file,
                key_file=key_file,
                assert_hostname=None if cfg.verify else False,
                **kwargs,
            )
        return urllib3.HTTPConnectionPool(host, port, **kwargs)

    def send(self, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """Make one attempt. See :class:`Transport`."""
        pool, path, host = self._targets.get(url) or self._target(url)
        deadline = None if self._attempt_timeout is None else time.monotonic() + self._attempt_timeout
        request, close = self._heads.encode(method, path, host, headers, body, close=self._close)
        try:
            conn = pool.take()
        except Exception as exc:
            raise map_urllib3_error(exc, url) from exc
        busy = self._busy
        busy.add(conn)
        reusable = False
        try:
            reused = conn.sock is not None
            if not reused:
                self._connect(conn, url, deadline)
            if self._aborted:  # after busy.add and the connect: abort() shut or will shut this socket
                raise ResponseError(f"the connector closed before the request to {url} was sent", url=url)
            try:
                result = self._exchange(conn, method, url, request, deadline)
            except NoResponse as exc:
                if not reused:
                    raise ResponseError(f"unreadable response from {url}: {exc}", url=url) from exc.__cause__
                # The stale keep-alive race: the server cannot have answered, so
                # the request goes again on a fresh connection, once.
                conn.close()
                # Checked before reconnecting too: abort() shutting this socket is what
                # ended the exchange, and a new connection would only wait for connect_timeout.
                if not self._aborted:
                    with self._lock:
                        self._reconnects += 1
                    self._connect(conn, url, deadline)
                if self._aborted:
                    raise ResponseError(
                        f"the connector closed before the request to {url} was resent", url=url
                    ) from exc.__cause__
                try:
                    result = self._exchange(conn, method, url, request, deadline)
                except NoResponse as again:
                    raise ResponseError(
                        f"unreadable response from {url}: {again}", url=url
                    ) from again.__cause__
            reusable = result.reusable and not close
            data = result.body
            if result.encoding is not None:
                data = decode(data, result.encoding, url, self._keep)
            return Response(result.status, result.reason, result.headers, data)
        except SinkError:
            raise
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise map_urllib3_error(u3e.SSLError(exc), url) from exc  # as urlopen wraps them
        except Exception as exc:
            raise map_urllib3_error(exc, url) from exc
        finally:
            busy.discard(conn)
            if not reusable:
                conn.close()  # a half-read, closing or upgraded connection serves no one else
            pool.give_back(conn)

    def _connect(self, conn: Any, url: str, deadline: float | None) -> None:
        timeout = self._connect_timeout
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectTimeoutError(f"attempt_timeout exceeded before connecting to {url}", url=url)
            timeout = min(timeout, left)
        connect(conn, timeout, url)

    def _exchange(self, conn: Any, method: str, url: str, request: bytes, deadline: float | None) -> Any:
        return exchange(
            conn.sock,
            request,
            url=url,
            head_only=method == "HEAD",
            keep=self._keep,
            drain_limit=DRAIN_LIMIT,
            read_timeout=self._read_timeout,
            deadline=deadline,
        )

    def close(self) -> None:
        """Close idle connections of every pool."""
        for pool in list(self._pools.values()):
            pool.close()

    def abort(self) -> None:
        """Shut every socket in use (unblocking in-flight reads), then close the pools.

        No request is written after it: ``send`` checks the flag after its
        connection is in ``_busy`` (so this loop shuts it if the check came first).
        """
        self._aborted = True
        for conn in list(self._busy):  # the copy runs in C under the GIL: no concurrent change
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
        if session.trust_env:
            # requests imports netrc (and shlex) on a session's first request, in a
            # worker thread: imported here, before any worker exists, a fork cannot
            # catch it half done (see the idna note above).
            importlib.import_module("netrc")
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
            data, _ = read_capped(lambda n: resp.raw.read1(n, decode_content=True), url, self._keep, deadline)
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
