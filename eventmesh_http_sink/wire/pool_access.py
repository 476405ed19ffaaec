"""The urllib3 pool internals the transport relies on, in one place.

urllib3 has no public way to borrow a connection from a pool and give it back:
``urlopen`` does it with ``HTTPConnectionPool._get_conn`` and ``_put_conn``. The
transport needs exactly that (it writes and reads the socket itself), so this
module is the only one that calls them; ``tests/test_pool_access.py`` checks
their signatures and the behaviour relied on (a pooled connection with bytes
waiting or closed by the server is closed by ``_get_conn`` before it is handed
out, see ``urllib3.util.connection.is_connection_dropped``), and this module
refuses to import if they are gone, so a urllib3 release that changes them
fails loudly instead of misbehaving.

:func:`connect` opens a connection (TCP, then TLS with certificate and
hostname verification, all urllib3's) and classifies its failures exactly as
``HTTPConnectionPool.urlopen`` does, so the connector's errors are unchanged.
"""

from __future__ import annotations

import errno
import socket
import ssl
from typing import Any

from urllib3 import HTTPConnectionPool
from urllib3 import exceptions as u3e

__all__ = ["connect", "give_back", "take"]

if not all(callable(getattr(HTTPConnectionPool, name, None)) for name in ("_get_conn", "_put_conn")):
    raise ImportError(  # defensive: urllib3 changed the internals this module wraps
        "this urllib3 has no HTTPConnectionPool._get_conn/_put_conn: eventmesh_http_sink needs an update"
    )

# urllib3's connectionpool._blocking_errnos: a TLS handshake read that would block timed out.
_BLOCKING = {errno.EAGAIN, errno.EWOULDBLOCK}


def take(pool: HTTPConnectionPool) -> Any:
    """A connection of ``pool``: an idle one (dropped ones closed first) or a new, unconnected one.

    Blocks while ``pool_maxsize`` connections are out (the pool is built with
    ``block=True``). A connection whose socket is readable before any request
    (the server closed it, or wrote past its last response) comes back closed:
    ``conn.sock is None`` then, and :func:`connect` opens a fresh one.

    Raises:
        urllib3.exceptions.ClosedPoolError: the pool was closed.
    """
    return pool._get_conn()


def give_back(pool: HTTPConnectionPool, conn: Any) -> None:
    """Return a connection taken with :func:`take` (closed or at a clean message boundary)."""
    pool._put_conn(conn)


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
