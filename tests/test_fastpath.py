"""The plain-HTTP fast path (fastpath.send_plain) against raw scripted responses.

A tiny loopback server reads each request (headers + Content-Length body) and
writes exactly the bytes a test scripts, so framing cases FaultServer does not
produce are covered: chunked bodies, Connection: close, HTTP/1.0, interim 1xx,
bodies that run to the close, bad Content-Length.
"""

from __future__ import annotations

import collections
import socket
import threading
from collections.abc import Iterator

import pytest

from eventmesh_http_sink import ConnectRecord, HttpSinkConfig, ResponseError, RetryConfig, Urllib3Transport

NO_RETRY = RetryConfig(max_retries=0)


class RawServer:
    """Answers request i with ``replies[i]`` (raw bytes); ``None`` closes the connection."""

    def __init__(self) -> None:
        self.replies: collections.deque[bytes | None] = collections.deque()
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/in?x=1"
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + buf[:length])
                buf = buf[length:]
                reply = (
                    self.replies.popleft()
                    if self.replies
                    else b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                )
                if reply is None:
                    return
                conn.sendall(reply)
                if (
                    b"Connection: close" in reply
                    or reply.startswith(b"HTTP/1.0")
                    or (b"Content-Length" not in reply and b"chunked" not in reply)
                ):
                    return

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def raw() -> Iterator[RawServer]:
    srv = RawServer()
    yield srv
    srv.close()


def _transport(raw: RawServer, **kw: object) -> Urllib3Transport:
    return Urllib3Transport(HttpSinkConfig(raw.url, retry=NO_RETRY, **kw))  # type: ignore[arg-type]


def test_request_bytes_and_keep_alive_reuse(raw: RawServer) -> None:
    raw.replies.extend([b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"] * 3)
    t = _transport(raw)
    for i in range(3):
        resp = t.send(
            "POST", raw.url, b'{"i":%d}' % i, {"Content-Type": "application/json", "Idempotency-Key": f"k{i}"}
        )
        assert (resp.status, resp.reason, resp.body) == (201, "Created", b"hello")
        assert resp.headers["x-a"] == "1"
    assert raw.connections == 1
    first = raw.requests[0]
    assert first.startswith(b"POST /in?x=1 HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in first
    assert b"\r\nIdempotency-Key: k0\r\n" in first
    assert b"\r\nContent-Length: 7\r\n" in first
    assert first.endswith(b'\r\n\r\n{"i":0}')
    t.close()


def test_chunked_body_with_trailers_keeps_the_connection(raw: RawServer) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"
    )
    raw.replies.extend([chunked, chunked])
    t = _transport(raw)
    assert t.send("POST", raw.url, b"a", {}).body == b"hello world"
    assert t.send("POST", raw.url, b"b", {}).body == b"hello world"
    assert raw.connections == 1
    t.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n\r\nok",  # no length: the body runs to the close
    ],
)
def test_connection_not_reused_when_the_server_closes(raw: RawServer, reply: bytes) -> None:
    raw.replies.extend([reply, reply])
    t = _transport(raw)
    assert t.send("POST", raw.url, b"a", {}).body == b"ok"
    assert t.send("POST", raw.url, b"b", {}).body == b"ok"
    assert raw.connections == 2
    t.close()


def test_interim_100_continue_is_skipped(raw: RawServer) -> None:
    raw.replies.append(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
    assert _transport(raw).send("POST", raw.url, b"a", {}).status == 202


def test_body_is_capped_and_drained(raw: RawServer) -> None:
    raw.replies.extend([b"HTTP/1.1 500 Oops\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000] * 2)
    t = _transport(raw, max_response_bytes=10)
    resp = t.send("POST", raw.url, b"a", {})
    assert (resp.status, resp.body) == (500, b"x" * 10)
    assert t.send("POST", raw.url, b"a", {}).status == 500
    assert raw.connections == 1  # drained: reused
    t.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nbad header line\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        None,  # closed before any answer
    ],
)
def test_malformed_responses_are_response_errors_with_cause(raw: RawServer, reply: bytes | None) -> None:
    raw.replies.append(reply)
    t = _transport(raw)
    with pytest.raises(ResponseError) as info:
        t.send("POST", raw.url, b"a", {})
    assert info.value.__cause__ is not None
    assert t.send("POST", raw.url, b"b", {}).status == 200  # the broken connection was not reused
    t.close()


def test_connector_delivers_through_the_fast_path(raw: RawServer) -> None:
    from eventmesh_http_sink import HttpSinkConnector

    with HttpSinkConnector(HttpSinkConfig(raw.url, max_workers=4)) as sink:
        futures = [sink.put(ConnectRecord({"i": i}, {"topic": "t"})) for i in range(50)]
        results = [f.result(10) for f in futures]
    assert all(r.status == 200 for r in results)
    assert len(raw.requests) == 50
    assert all(b'\r\nextension: {"topic":"t"}\r\n' in r for r in raw.requests)


def test_folded_header_is_joined(raw: RawServer) -> None:
    raw.replies.append(b"HTTP/1.1 503 No\r\nRetry-After:\r\n  7\r\nContent-Length: 0\r\n\r\n")
    resp = _transport(raw).send("POST", raw.url, b"a", {})
    assert resp.status == 503
    assert resp.headers["retry-after"].strip() == "7"
