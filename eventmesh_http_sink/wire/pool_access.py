"""The connections of one host: at most ``pool_maxsize`` out, idle ones reused newest first.

urllib3 builds the connections (:meth:`HTTPConnectionPool._new_conn`, with the
pool's TLS settings) and connects them (:func:`connect`: TCP, then TLS with
certificate and hostname verification, all urllib3's). Keeping the idle ones
is done here: urllib3's own ``_get_conn``/``_put_conn`` cost a ``LifoQueue``
round (a ``Condition``, four lock rounds) and a ``poll`` built from scratch per
request, about a tenth of a record's CPU. :class:`Connections` keeps them in a
list (``append``/``pop`` are atomic under the GIL) and bounds the number out
with a ``SimpleQueue`` of tokens (C, no lock round while a token is there).

``_new_conn`` is the one urllib3 private this module calls (there is no public
way to make a pool's connection without sending a request on it);
``tests/test_pool_access.py`` pins its signature and the module refuses to
import if it is gone, so a urllib3 release that changes it fails loudly
instead of misbehaving.

:func:`connect` classifies its failures exactly as
``HTTPConnectionPool.urlopen`` does, so the connector's errors are unchanged.
"""

from __future__ import annotations

import errno
import queue
import select
import socket
import ssl
import weakref
from typing import Any

from urllib3 import HTTPConnectionPool
from urllib3 import exceptions as u3e

__all__ = ["Connections", "connect"]

if not callable(getattr(HTTPConnectionPool, "_new_conn", None)):
    raise ImportError(  # defensive: urllib3 changed the internal this module wraps
        "this urllib3 has no HTTPConnectionPool._new_conn: eventmesh_http_sink needs an update"
    )

# urllib3's connectionpool._blocking_errnos: a TLS handshake read that would block timed out.
_BLOCKING = {errno.EAGAIN, errno.EWOULDBLOCK}
# What urllib3's wait_for_read polls for (POLLHUP and POLLERR always come too).
_READABLE = select.POLLIN | select.POLLPRI


class Connections:
    """The connections of one urllib3 pool (one host), taken one at a time for a request.

    At most ``maxsize`` are out at once (:meth:`take` blocks for a free one).
    An idle connection whose socket is readable before any request (the server
    closed it, or wrote past its last response) is closed before it is handed
    out, as urllib3's ``is_connection_dropped`` check does: ``conn.sock is
    None`` then, and :func:`connect` opens a fresh one. The check costs one
    ``poll`` call on a poll object kept per socket.

    Args:
        pool: The urllib3 pool whose settings (host, port, TLS) make the connections.
        maxsize: The most connections out at once.
    """

    __slots__ = ("__weakref__", "_closed", "_idle", "_pool", "_slots", "_watch")

    def __init__(self, pool: HTTPConnectionPool, maxsize: int) -> None:
        self._pool = pool
        self._idle: list[Any] = []  # newest last: the warmest connection goes out first
        self._slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(maxsize):
            self._slots.put(None)
        # conn -> (its socket, a poll object registered for it): made once per socket.
        # The socket is held so that its identity cannot be reused by a new one.
        self._watch: dict[Any, tuple[Any, Any]] = {}
        self._closed = False
        # As urllib3's pool does: dropped without close(), it still closes its idle sockets.
        weakref.finalize(self, _close_all, self._idle)

    def take(self) -> Any:
        """An idle connection (a dropped one closed first) or a new, unconnected one.

        Raises:
            urllib3.exceptions.ClosedPoolError: :meth:`close` was called.
        """
        if self._closed:
            raise u3e.ClosedPoolError(self._pool, "Pool is closed.")
        slots = self._slots
        slots.get()  # C; sleeps only while maxsize connections are out
        try:
            if self._closed:  # close() came while this thread waited
                raise u3e.ClosedPoolError(self._pool, "Pool is closed.")
            try:
                conn = self._idle.pop()
            except IndexError:
                return self._pool._new_conn()
            sock = conn.sock
            if sock is not None:
                watch = self._watch.get(conn)
                if watch is None or watch[0] is not sock or watch[1].poll(0):
                    conn.close()  # readable while idle: closed by the server, or bytes no request asked for
            return conn
        except BaseException:
            slots.put(None)
            raise

    def give_back(self, conn: Any) -> None:
        """Return a connection from :meth:`take` (closed, or at a clean message boundary)."""
        sock = conn.sock
        if sock is not None:
            watch = self._watch.get(conn)
            if watch is None or watch[0] is not sock:
                poller = select.poll()
                poller.register(sock, _READABLE)
                self._watch[conn] = (sock, poller)
        self._idle.append(conn)
        if self._closed:  # close() may have emptied the list before the append: empty it again
            self._close_idle()
        self._slots.put(None)

    def close(self) -> None:
        """Close the idle connections; the ones out are closed when given back.

        A :meth:`take` blocked for a free connection raises ``ClosedPoolError`` at once.
        """
        self._closed = True
        self._close_idle()
        self._slots.put(None)  # wakes one blocked take, which passes the token on as it raises

    def _close_idle(self) -> None:
        for conn in _close_all(self._idle):
            self._watch.pop(conn, None)


def _close_all(idle: list[Any]) -> list[Any]:
    closed: list[Any] = []
    while True:
        try:
            conn = idle.pop()  # one at a time: a give_back may append meanwhile
        except IndexError:
            return closed
        conn.close()
        closed.append(conn)


def connect(conn: Any, timeout: float, url: str) -> None:
    """Connect ``conn`` (and for HTTPS do the TLS handshake and verification).

    Raises:
        urllib3.exceptions.NewConnectionError: refused, unreachable, unresolvable.
        urllib3.exceptions.ConnectTimeoutError: the TCP connect timed out.
        urllib3.exceptions.ReadTimeoutError: the TLS handshake timed out.
        urllib3.exceptions.SSLError: the handshake or the certificate failed.
        OSError: anything else from the socket (urlopen reports it as a
            ``ProtocolError``; the transport maps both to ``ResponseError``).
    """
    conn.timeout = timeout
    try:
        conn.connect()
    except (TimeoutError, ssl.SSLError, ssl.CertificateError, OSError) as exc:
        # The TCP connect raises urllib3's own NewConnectionError / ConnectTimeoutError
        # (not caught here); the TLS handshake raises these, translated as
        # HTTPConnectionPool._make_request translates them around _validate_conn.
        conn.close()
        if isinstance(exc, socket.timeout) or getattr(exc, "errno", None) in _BLOCKING:
            raise u3e.ReadTimeoutError(None, url, f"Read timed out. (read timeout={timeout})") from exc  # type: ignore[arg-type]
        if isinstance(exc, (ssl.SSLError, ssl.CertificateError)):
            raise u3e.SSLError(exc) from exc
        raise
