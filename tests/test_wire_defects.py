"""The 17 defects of issue 11, one regression test each, against raw scripted socket servers.

Each test is named after the defect's number in the issue. All but
``test_defect_16`` go through the public API (``Urllib3Transport.send``,
``HttpSinkConnector``, ``HttpSinkConfig``, ``parse_retry_after``), so they run
unchanged against the hand-written parser they replace (and fail there).
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from eventmesh_http_sink import (
    ConfigError,
    ConnectRecord,
    HttpSinkConfig,
    HttpSinkConnector,
    InvalidRecordError,
    ReadTimeoutError,
    ResponseError,
    RetryConfig,
    Urllib3Transport,
)
from eventmesh_http_sink.scheduling.retry import parse_retry_after
from tests.wire_servers import CLOSE, OK, ScriptServer, chunked, response

NO_RETRY = RetryConfig(max_retries=0)
FAST = RetryConfig(max_retries=3, initial_backoff=0.01, max_backoff=0.02)


@pytest.fixture
def raw() -> Iterator[ScriptServer]:
    with ScriptServer() as srv:
        yield srv


def _transport(raw: ScriptServer, **kw: Any) -> Urllib3Transport:
    return Urllib3Transport(HttpSinkConfig(raw.url, retry=NO_RETRY, **kw))


def _refused_at_once(raw: ScriptServer, reply: bytes, **kw: Any) -> ResponseError:
    """Serve ``reply`` and keep the connection open: the answer must be judged from the bytes alone."""
    raw.script((reply,))  # no CLOSE: a parser that waits for more would wait for read_timeout
    t = _transport(raw, read_timeout=5, **kw)  # a parser that waits fails with ReadTimeoutError
    with pytest.raises(ResponseError) as info:
        t.send("POST", raw.url, b"a", {})
    assert info.value.__cause__ is not None
    # The refused connection is not reused: the next request opens a new one.
    assert t.send("POST", raw.url, b"b", {}).status == 200
    assert raw.connections == 2
    t.close()
    return info.value


def test_defect_01_unrequested_101_fails_the_attempt_and_closes(raw: ScriptServer) -> None:
    err = _refused_at_once(
        raw, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    assert "101" in str(err)


@pytest.mark.parametrize("size", [b"0x5", b"+5", b"0_5", b" 5", b"5 ", b"-5"])
def test_defect_02_non_hex_chunk_sizes_are_refused(raw: ScriptServer, size: bytes) -> None:
    body = size + b"\r\nhello\r\n0\r\n\r\n"
    _refused_at_once(raw, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)


def test_defect_03_transfer_encoding_with_content_length_is_refused(raw: ScriptServer) -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n" + chunked(b"hello")
    _refused_at_once(raw, reply)


def test_defect_04_non_ascii_digit_content_length_is_a_response_error(raw: ScriptServer) -> None:
    err = _refused_at_once(raw, "HTTP/1.1 200 OK\r\nContent-Length: ²\r\n\r\nok".encode("latin-1"))
    assert err.retryable  # a ResponseError, not an "unexpected ValueError" that is never retried


@pytest.mark.parametrize("bad", [b"a\rb", b"a\nb", b"a\x00b"])
def test_defect_05_cr_lf_nul_in_header_values_are_refused(raw: ScriptServer, bad: bytes) -> None:
    _refused_at_once(raw, b"HTTP/1.1 200 OK\r\nX-Bad: " + bad + b"\r\nContent-Length: 2\r\n\r\nok")


@pytest.mark.parametrize("status", [b"000", b"042", b"099"])
def test_defect_06_status_below_100_is_refused(raw: ScriptServer, status: bytes) -> None:
    _refused_at_once(raw, b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 0\r\n\r\n" + OK)


def test_defect_07_every_recv_is_bounded_by_the_attempt_deadline(raw: ScriptServer) -> None:
    # A byte every 0.8 s: each recv returns before read_timeout, so only a deadline
    # applied per recv ends the attempt at 1.0 s (the old code read on to ~1.6 s).
    raw.script((b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", *[0.8, b"x"] * 10))
    t = _transport(raw, read_timeout=5, attempt_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError, match="attempt_timeout"):
        t.send("POST", raw.url, b"a", {})
    elapsed = time.monotonic() - started
    assert elapsed < 1.4, f"the attempt ran {elapsed:.2f}s past its 1.0s deadline"
    t.close()


def test_defect_08_keep_alive_false_closes_even_when_the_server_does_not() -> None:
    with ScriptServer(ignore_close=True) as srv:  # answers, keeps the connection, no Connection: close
        t = Urllib3Transport(HttpSinkConfig(srv.url, keep_alive=False))
        for _ in range(3):
            assert t.send("POST", srv.url, b"a", {}).status == 200
        assert srv.connections == 3
        assert all(r.header("Connection") == [b"close"] for r in srv.requests)
        t.close()


@pytest.mark.parametrize(
    "header",
    [
        {"Content-Length": "99"},
        {"transfer-encoding": "chunked"},
        {"Connection": "keep-alive"},
        {"TE": "trailers"},
        {"Trailer": "X"},
        {"Upgrade": "h2c"},
        {"Expect": "100-continue"},
    ],
)
def test_defect_09_framing_headers_are_refused_in_config_and_header_fn(
    raw: ScriptServer, header: dict[str, str]
) -> None:
    name = next(iter(header))
    with pytest.raises(ConfigError, match=f"headers: header '{name}'"):
        HttpSinkConfig(raw.url, headers=header)
    sink = HttpSinkConnector(HttpSinkConfig(raw.url, header_fn=lambda record: header))
    with sink:
        record = ConnectRecord("x")
        with pytest.raises(InvalidRecordError, match=f"record '{record.record_id}'.*'{name}'"):
            sink.put(record)
    assert raw.requests == []  # nothing went out


def test_defect_10_oversized_body_keeps_its_first_bytes(raw: ScriptServer) -> None:
    big = b"0123456789" * 150_000  # 1.5 MB: more than max_response_bytes + the 1 MB drain limit
    raw.script((response(500, big),))
    t = _transport(raw, max_response_bytes=10)
    resp = t.send("POST", raw.url, b"a", {})
    assert (resp.status, resp.body) == (500, b"0123456789")
    assert t.send("POST", raw.url, b"b", {}).status == 200
    assert raw.connections == 2  # not drained: that connection was given up
    t.close()


def test_defect_11_trailer_count_is_bounded(raw: ScriptServer) -> None:
    trailers = b"".join(b"X-T%d: v\r\n" % i for i in range(500))
    _refused_at_once(
        raw, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"ok", trailers=trailers)
    )


def test_defect_11_header_count_is_bounded(raw: ScriptServer) -> None:
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    _refused_at_once(raw, b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok")


def test_defect_11_interim_answers_are_bounded(raw: ScriptServer) -> None:
    _refused_at_once(raw, b"HTTP/1.1 100 Continue\r\n\r\n" * 50 + OK)


def test_defect_12_retry_after_with_non_ascii_digits_falls_back_to_backoff(raw: ScriptServer) -> None:
    assert parse_retry_after("²") is None
    assert parse_retry_after("١٢") is None  # Arabic-Indic digits: str.isdigit() says yes
    raw.script((response(503, headers=[("Retry-After", "²")]),))
    with HttpSinkConnector(HttpSinkConfig(raw.url, retry=FAST)) as sink:
        result = sink.put(ConnectRecord("x")).result(timeout=10)
    assert (result.status, result.attempts) == (200, 2)  # a retryable 503, retried


def test_defect_13_host_from_header_fn_replaces_the_default(raw: ScriptServer) -> None:
    config = HttpSinkConfig(raw.url, header_fn=lambda record: {"host": "hooks.example"})
    with HttpSinkConnector(config) as sink:
        assert sink.put(ConnectRecord("x")).result(timeout=10).status == 200
    (request,) = raw.requests
    assert request.header("Host") == [b"hooks.example"]


def test_defect_14_accept_encoding_from_headers_replaces_identity_and_is_decoded(raw: ScriptServer) -> None:
    raw.script((response(200, gzip.compress(b'{"ok":true}'), [("Content-Encoding", "gzip")]),))
    config = HttpSinkConfig(raw.url, headers={"Accept-Encoding": "gzip"})
    with HttpSinkConnector(config) as sink:
        result = sink.put(ConnectRecord("x")).result(timeout=10)
    assert result.response_body == b'{"ok":true}'
    (request,) = raw.requests
    assert request.header("Accept-Encoding") == [b"gzip"]


def test_defect_15_bare_lf_response_is_judged_at_once(raw: ScriptServer) -> None:
    # llhttp's strict mode (Node.js's default) refuses bare LF line ends: at once,
    # never after waiting for a read timeout (the old parser waited for CRLF CRLF).
    err = _refused_at_once(raw, b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok")
    assert "CR" in str(err)


def test_defect_16_body_read_is_linear_in_its_size() -> None:
    # 16 MB read 1 KB per recv (a slow link's pieces): linear, this takes well under
    # a second; copying the buffer on every recv (the old _Reader) needs ~128 GB of
    # memcpy and cannot finish inside the 20 s deadline.
    from eventmesh_http_sink.wire.http11 import exchange

    size = 16 * 1024 * 1024
    client, server = socket.socketpair()
    calls: list[int] = []

    class Slow:
        """The client socket, handing out at most 1 KB per recv."""

        def __getattr__(self, name: str) -> Any:
            return getattr(client, name)

        def recv(self, n: int) -> bytes:
            return client.recv(min(n, 1024))

        def recv_into(self, buffer: Any, n: int = 0) -> int:
            calls.append(1)
            return client.recv_into(buffer, min(n or len(buffer), 1024))

    def serve() -> None:
        server.recv(65536)
        server.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        server.sendall(b"x" * size)

    threading.Thread(target=serve, daemon=True).start()
    result = exchange(
        Slow(),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        url="http://x/",
        head_only=False,
        keep=size,
        drain_limit=0,
        read_timeout=20,
        deadline=time.monotonic() + 20,
    )
    assert len(result.body) == size and result.reusable
    assert len(calls) >= size // 1024  # it did read in 1 KB pieces
    client.close()
    server.close()


def test_defect_17_gzip_chunked_transfer_coding_is_delivered_once(raw: ScriptServer) -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" + chunked(gzip.compress(b"done"))
    raw.script((reply, CLOSE))
    with HttpSinkConnector(HttpSinkConfig(raw.url, retry=FAST)) as sink:
        result = sink.put(ConnectRecord("x")).result(timeout=10)
    assert (result.status, result.attempts) == (200, 1)
    assert len(raw.requests) == 1
