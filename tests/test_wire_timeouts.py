"""How the wire bounds its waits: plain sockets block with the kernel's timeouts, the rest use timeout mode.

On plain TCP, :func:`.http11.exchange` leaves the socket blocking with
``SO_RCVTIMEO``/``SO_SNDTIMEO`` at ``read_timeout`` (no ``poll`` per ``recv``);
a wait the attempt's deadline shortens, a TLS socket (a blocking ``SSLSocket``
retries a timed-out read forever) and a request too big for one send use
Python's timeout mode. Either way a timeout is reported exactly as before. (An
``abort()`` unblocking a blocked plain read: ``test_http11.py``.)
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from eventmesh_http_sink import HttpSinkConfig, ReadTimeoutError, RetryConfig, Urllib3Transport
from eventmesh_http_sink.wire import http11
from eventmesh_http_sink.wire.body import DRAIN_LIMIT
from eventmesh_http_sink.wire.http11 import exchange
from tests.wire_servers import OK, ScriptServer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernel timeouts: Linux only")

NO_RETRY = RetryConfig(max_retries=0)
REQUEST = b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na"


@pytest.fixture
def raw() -> Iterator[ScriptServer]:
    with ScriptServer() as srv:
        yield srv


def _plain(srv: ScriptServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=5)  # timeout mode, as urllib3 connects


def _exchange(
    sock: socket.socket, read_timeout: float, deadline: float | None = None, request: bytes = REQUEST
) -> Any:
    return exchange(
        sock,
        request,
        url="http://x/in",
        head_only=False,
        keep=1000,
        drain_limit=DRAIN_LIMIT,
        read_timeout=read_timeout,
        deadline=deadline,
    )


def _kernel_timeouts(sock: socket.socket) -> tuple[tuple[int, int], tuple[int, int]]:
    return tuple(  # type: ignore[return-value]
        struct.unpack("ll", sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("ll")))
        for opt in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO)
    )


def test_a_plain_socket_waits_blocking_with_the_kernels_timeouts(raw: ScriptServer) -> None:
    with _plain(raw) as sock:
        assert _exchange(sock, 2.5).status == 200
        assert sock.gettimeout() is None
        assert _kernel_timeouts(sock) == ((2, 500000), (2, 500000))


def test_a_sub_second_read_timeout_is_not_rounded_to_no_timeout(raw: ScriptServer) -> None:
    with _plain(raw) as sock:
        _exchange(sock, 0.0000001)  # answered at once: only the setting is checked
        assert _kernel_timeouts(sock)[0] != (0, 0)  # a zero timeval would mean "wait forever"


def test_a_plain_read_timeout_fires_on_the_blocking_socket_as_before(raw: ScriptServer) -> None:
    raw.script((OK,), (3.0, OK))  # the second request is answered only after the read timeout
    t = Urllib3Transport(HttpSinkConfig(raw.url, retry=NO_RETRY, read_timeout=0.5))
    assert t.send("POST", raw.url, b"a", {}).status == 200  # the connection is blocking from here
    timed_out = r"^read from http://127.0.0.1:\d+/in\?x=\S+ timed out$"  # the message timeout mode gave
    with pytest.raises(ReadTimeoutError, match=timed_out) as info:
        t.send("POST", raw.url, b"b", {})
    cause = info.value.__cause__
    assert type(cause) is TimeoutError and str(cause) == "timed out"  # as timeout mode's socket.timeout
    assert isinstance(cause.__cause__, BlockingIOError)  # SO_RCVTIMEO ran out
    assert raw.connections == 1  # the timeout came on the reused, blocking connection
    t.close()


def test_a_wait_the_deadline_shortens_uses_timeout_mode_then_blocking_again(raw: ScriptServer) -> None:
    raw.script((OK,), (OK,), (OK,), (3.0, OK))
    with _plain(raw) as sock:
        _exchange(sock, 5.0)
        assert sock.gettimeout() is None
        _exchange(sock, 5.0, deadline=time.monotonic() + 2.0)  # 2 s left < read_timeout
        assert 0 < (sock.gettimeout() or 0) <= 2.0
        _exchange(sock, 5.0)
        assert sock.gettimeout() is None and _kernel_timeouts(sock)[0] == (5, 0)
        with pytest.raises(ReadTimeoutError, match="attempt_timeout exceeded"):
            _exchange(sock, 5.0, deadline=time.monotonic() + 0.5)  # the deadline, not the kernel, ends it


def test_a_send_the_peer_never_reads_times_out_as_in_timeout_mode() -> None:
    # Tiny buffers on both ends: 16 KiB cannot go out while the peer reads nothing.
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024)
        sock.settimeout(5)
        sock.connect(listener.getsockname())
        with sock, pytest.raises(TimeoutError, match="timed out") as info:
            _exchange(sock, 0.3, request=b"x" * (16 * 1024))
        # As timeout mode tells it: SO_SNDTIMEO ran out on the first send (EAGAIN, the
        # cause), or it sent part and timeout mode's sendall of the rest timed out.
        assert type(info.value) is TimeoutError
        assert info.value.__cause__ is None or isinstance(info.value.__cause__, BlockingIOError)
    finally:
        listener.close()


def test_a_request_too_big_for_one_send_keeps_timeout_mode(raw: ScriptServer) -> None:
    # Its send may trickle: timeout mode bounds the whole send by read_timeout.
    body = b"z" * (20 * 1024)
    big = b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with _plain(raw) as sock:
        _exchange(sock, 5.0)
        assert sock.gettimeout() is None
        assert _exchange(sock, 5.0, request=big).status == 200
        assert sock.gettimeout() == 5.0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_a_tls_read_timeout_still_fires(ca: trustme.CA, tmp_path: Any) -> None:
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with ScriptServer(ssl_context=ctx) as srv:
        srv.script((OK,), (3.0, OK))
        t = Urllib3Transport(HttpSinkConfig(srv.url, retry=NO_RETRY, read_timeout=0.5, ca_certs=str(bundle)))
        assert t.send("POST", srv.url, b"a", {}).status == 200
        with pytest.raises(ReadTimeoutError, match="timed out"):
            t.send("POST", srv.url, b"b", {})  # a blocking SSLSocket would wait for the late answer
        t.close()


def test_the_import_probe_finds_the_kernels_timeouts_here() -> None:
    assert http11._kernel_timeouts() and http11._KERNEL_TIMEOUTS


def test_a_timeval_the_kernel_refuses_keeps_timeout_mode(
    raw: ScriptServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on 32-bit Linux with a 64-bit time_t, where an 8-byte "ll" timeval fails with EINVAL.
    monkeypatch.setattr(http11, "_timeval", lambda seconds: b"\0" * 3)
    assert http11._kernel_timeouts() is False  # the import probe says no
    raw.script((OK,), (OK,), (3.0, OK))
    with _plain(raw) as sock:  # and were the flag set anyway, every exchange falls back to timeout mode
        assert _exchange(sock, 2.5).status == 200
        assert sock.gettimeout() == 2.5
        assert _exchange(sock, 2.5).status == 200
        assert sock.gettimeout() == 2.5
        with pytest.raises(ReadTimeoutError, match="timed out"):
            _exchange(sock, 0.5)  # the late answer: timeout mode still bounds the read


def test_without_kernel_timeouts_a_plain_socket_keeps_timeout_mode(
    raw: ScriptServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http11, "_KERNEL_TIMEOUTS", False)
    with _plain(raw) as sock:
        assert _exchange(sock, 2.5).status == 200
        assert sock.gettimeout() == 2.5
