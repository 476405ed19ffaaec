"""The urllib3 internals wire/pool_access.py wraps: fail loudly here if a urllib3 release changes them."""

from __future__ import annotations

import inspect
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
import trustme
import urllib3
from urllib3 import exceptions as u3e

from eventmesh_http_sink.testing import free_port
from eventmesh_http_sink.wire.pool_access import connect, give_back, take
from tests.wire_servers import CLOSE, OK, ScriptServer, Step


@pytest.fixture
def raw() -> Iterator[ScriptServer]:
    with ScriptServer() as srv:
        yield srv


def _pool(srv: ScriptServer, maxsize: int = 2) -> urllib3.HTTPConnectionPool:
    return urllib3.HTTPConnectionPool("127.0.0.1", srv.port, maxsize=maxsize, block=True)


def test_the_private_methods_keep_their_signatures() -> None:
    get = inspect.signature(urllib3.HTTPConnectionPool._get_conn)
    put = inspect.signature(urllib3.HTTPConnectionPool._put_conn)
    assert list(get.parameters) == ["self", "timeout"]
    assert get.parameters["timeout"].default is None
    assert list(put.parameters) == ["self", "conn"]


def test_take_gives_a_new_unconnected_connection_then_the_returned_one(raw: ScriptServer) -> None:
    pool = _pool(raw)
    conn = take(pool)
    assert conn.sock is None
    connect(conn, 5, raw.url)
    conn.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.sock.recv(100) == OK
    give_back(pool, conn)
    again = take(pool)
    assert again is conn and again.sock is not None  # kept alive and handed out again
    give_back(pool, again)
    pool.close()


@pytest.mark.parametrize("late", [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", CLOSE])
def test_take_closes_a_connection_with_bytes_waiting_or_closed_by_the_server(
    raw: ScriptServer, late: Step
) -> None:
    raw.script((OK, 0.1, late))
    pool = _pool(raw)
    conn = take(pool)
    connect(conn, 5, raw.url)
    conn.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.sock.recv(100) == OK
    give_back(pool, conn)
    time.sleep(0.4)  # the late bytes (or the FIN) arrive while the connection is idle
    again = take(pool)
    assert again is conn and again.sock is None  # urllib3's is_connection_dropped closed it
    give_back(pool, again)
    pool.close()


def test_take_blocks_while_the_pool_is_exhausted(raw: ScriptServer) -> None:
    pool = _pool(raw, maxsize=1)
    first = take(pool)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(take(pool)))
    waiter.start()
    time.sleep(0.2)
    assert got == []  # blocked: pool_maxsize bounds the connections
    give_back(pool, first)
    waiter.join(5)
    assert got == [first]
    pool.close()


def test_take_from_a_closed_pool_raises(raw: ScriptServer) -> None:
    pool = _pool(raw)
    pool.close()
    with pytest.raises(u3e.ClosedPoolError):
        take(pool)


def test_connect_classifies_like_urlopen() -> None:
    refused = urllib3.HTTPConnectionPool("127.0.0.1", free_port())
    with pytest.raises(u3e.NewConnectionError):
        connect(take(refused), 2, "http://x/")


def test_connect_tls_failures_like_urlopen(tmp_path: object) -> None:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    with ScriptServer(ssl_context=ctx) as srv:
        pool = urllib3.HTTPSConnectionPool("127.0.0.1", srv.port, cert_reqs="CERT_REQUIRED")
        with pytest.raises(u3e.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            connect(take(pool), 5, srv.url)
    # A server that accepts but never answers the handshake: a read timeout, as urlopen says.
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        pool = urllib3.HTTPSConnectionPool(
            "127.0.0.1", silent.getsockname()[1], cert_reqs="CERT_NONE", assert_hostname=False
        )
        with pytest.raises(u3e.ReadTimeoutError):
            connect(take(pool), 0.3, "https://x/")
    finally:
        silent.close()
