"""wire/pool_access.py: the idle connections it keeps, and the urllib3 internal it wraps.

The signature test fails loudly here if a urllib3 release changes that internal.
"""

from __future__ import annotations

import gc
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
from eventmesh_http_sink.wire.pool_access import Connections, connect
from tests.wire_servers import CLOSE, OK, ScriptServer, Step


@pytest.fixture
def raw() -> Iterator[ScriptServer]:
    with ScriptServer() as srv:
        yield srv


def _pool(srv: ScriptServer, maxsize: int = 2) -> Connections:
    return Connections(urllib3.HTTPConnectionPool("127.0.0.1", srv.port), maxsize)


def test_the_private_method_keeps_its_signature() -> None:
    new = inspect.signature(urllib3.HTTPConnectionPool._new_conn)
    assert list(new.parameters) == ["self"]
    conn = urllib3.HTTPSConnectionPool("127.0.0.1", 1, cert_reqs="CERT_NONE")._new_conn()
    assert isinstance(conn, urllib3.connection.HTTPSConnection) and conn.sock is None


def test_take_gives_a_new_unconnected_connection_then_the_returned_one(raw: ScriptServer) -> None:
    pool = _pool(raw)
    conn = pool.take()
    assert conn.sock is None
    connect(conn, 5, raw.url)
    conn.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.sock.recv(100) == OK
    pool.give_back(conn)
    again = pool.take()
    assert again is conn and again.sock is not None  # kept alive and handed out again
    pool.give_back(again)
    pool.close()


def test_the_newest_idle_connection_goes_out_first(raw: ScriptServer) -> None:
    pool = _pool(raw, maxsize=3)
    conns = [pool.take() for _ in range(3)]
    for conn in conns:
        connect(conn, 5, raw.url)
        pool.give_back(conn)
    newest = pool.take()
    assert newest is conns[-1]  # as urllib3's LifoQueue: idle ones beyond the load time out server-side
    pool.give_back(newest)
    pool.close()


@pytest.mark.parametrize("late", [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", CLOSE])
def test_take_closes_a_connection_with_bytes_waiting_or_closed_by_the_server(
    raw: ScriptServer, late: Step
) -> None:
    raw.script((OK, 0.1, late))
    pool = _pool(raw)
    conn = pool.take()
    connect(conn, 5, raw.url)
    conn.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.sock.recv(100) == OK
    pool.give_back(conn)
    time.sleep(0.4)  # the late bytes (or the FIN) arrive while the connection is idle
    again = pool.take()
    assert again is conn and again.sock is None  # closed before reuse, as urllib3's is_connection_dropped
    pool.give_back(again)
    pool.close()


def test_a_reconnected_connection_is_watched_on_its_new_socket(raw: ScriptServer) -> None:
    raw.script((OK,), (OK, 0.1, CLOSE))
    pool = _pool(raw)
    conn = pool.take()
    for _ in range(2):  # the second socket replaces the first: its poll object must follow
        conn.close()
        connect(conn, 5, raw.url)
        conn.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.sock.recv(100) == OK
        pool.give_back(conn)
        conn = pool.take()
        assert conn.sock is not None
    pool.give_back(conn)
    time.sleep(0.4)  # the second connection's FIN arrives while it is idle
    assert pool.take().sock is None
    pool.close()


def test_take_blocks_while_the_pool_is_exhausted(raw: ScriptServer) -> None:
    pool = _pool(raw, maxsize=1)
    first = pool.take()
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(pool.take()))
    waiter.start()
    time.sleep(0.2)
    assert got == []  # blocked: pool_maxsize bounds the connections
    pool.give_back(first)
    waiter.join(5)
    assert got == [first]
    pool.close()


def test_take_from_a_closed_pool_raises(raw: ScriptServer) -> None:
    pool = _pool(raw)
    pool.close()
    with pytest.raises(u3e.ClosedPoolError):
        pool.take()


def test_close_wakes_every_blocked_take(raw: ScriptServer) -> None:
    pool = _pool(raw, maxsize=1)
    first = pool.take()
    errors: list[BaseException] = []

    def take() -> None:
        try:
            pool.take()
        except u3e.ClosedPoolError as exc:
            errors.append(exc)

    waiters = [threading.Thread(target=take) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.2)
    pool.close()  # the connection out is still out: the waiters must not wait for it
    for waiter in waiters:
        waiter.join(5)
    assert len(errors) == 3
    pool.give_back(first)


def test_a_connection_given_back_after_close_is_closed(raw: ScriptServer) -> None:
    pool = _pool(raw)
    conn = pool.take()
    connect(conn, 5, raw.url)
    pool.close()
    pool.give_back(conn)
    assert conn.sock is None


def test_idle_connections_are_closed_when_the_pool_is_collected(raw: ScriptServer) -> None:
    pool = _pool(raw)
    conn = pool.take()
    connect(conn, 5, raw.url)
    pool.give_back(conn)
    del pool
    gc.collect()
    assert conn.sock is None  # no socket left for a ResourceWarning at exit


def test_connect_classifies_like_urlopen() -> None:
    refused = urllib3.HTTPConnectionPool("127.0.0.1", free_port())
    with pytest.raises(u3e.NewConnectionError):
        connect(Connections(refused, 1).take(), 2, "http://x/")


def test_connect_tls_failures_like_urlopen(tmp_path: object) -> None:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    with ScriptServer(ssl_context=ctx) as srv:
        pool = urllib3.HTTPSConnectionPool("127.0.0.1", srv.port, cert_reqs="CERT_REQUIRED")
        with pytest.raises(u3e.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            connect(Connections(pool, 1).take(), 5, srv.url)
    # A server that accepts but never answers the handshake: a read timeout, as urlopen says.
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        pool = urllib3.HTTPSConnectionPool(
            "127.0.0.1", silent.getsockname()[1], cert_reqs="CERT_NONE", assert_hostname=False
        )
        with pytest.raises(u3e.ReadTimeoutError):
            connect(Connections(pool, 1).take(), 0.3, "https://x/")
    finally:
        silent.close()
