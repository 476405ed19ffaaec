"""The send path (wire/http11.py under Urllib3Transport) against raw scripted responses, http and https.

Framing cases a well-behaved server never produces, keep-alive reuse only at a
clean message boundary, HEAD, interim answers, body caps and Content-Encoding,
the same results as the urlopen path (RequestsTransport) for the same bytes,
and https taking the very same path.
"""

from __future__ import annotations

import ssl
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import trustme

from eventmesh_http_sink import (
    ConnectRecord,
    EndpointUnavailableError,
    HttpSinkConfig,
    HttpSinkConnector,
    RequestsTransport,
    ResponseError,
    RetryConfig,
    Urllib3Transport,
)
from tests.wire_servers import CLOSE, ScriptServer, chunked, response

NO_RETRY = RetryConfig(max_retries=0)


@pytest.fixture
def raw() -> Iterator[ScriptServer]:
    with ScriptServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls(ca: trustme.CA) -> Iterator[ScriptServer]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    with ScriptServer(ssl_context=ctx) as srv:
        yield srv


def _transport(srv: ScriptServer, **kw: Any) -> Urllib3Transport:
    return Urllib3Transport(HttpSinkConfig(srv.url, retry=NO_RETRY, **kw))


def _tls_transport(srv: ScriptServer, ca: trustme.CA, tmp_path: Any, **kw: Any) -> Urllib3Transport:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return _transport(srv, ca_certs=str(bundle), **kw)


def test_request_bytes_and_keep_alive_reuse(raw: ScriptServer) -> None:
    raw.script(*[(response(201, b"hello", [("X-A", "1")], reason="Created"),)] * 3)
    t = _transport(raw)
    for i in range(3):
        resp = t.send(
            "POST", raw.url, b'{"i":%d}' % i, {"Content-Type": "application/json", "Idempotency-Key": f"k{i}"}
        )
        assert (resp.status, resp.reason, resp.body) == (201, "Created", b"hello")
        assert resp.headers["x-a"] == "1"
    assert raw.connections == 1
    first = raw.requests[0]
    assert (first.method, first.target) == ("POST", b"/in?x=1")
    assert first.names() == ["host", "accept-encoding", "content-type", "idempotency-key", "content-length"]
    assert first.header("Host") == [f"127.0.0.1:{raw.port}".encode()]
    assert first.header("Content-Length") == [b"7"]
    assert first.body == b'{"i":0}'
    t.close()


def test_chunked_body_with_trailers_keeps_the_connection(raw: ScriptServer) -> None:
    reply = response(
        200, chunked(b"hello", b" world", trailers=b"X-T: 1\r\n"), [("Transfer-Encoding", "chunked")]
    )
    raw.script((reply,), (reply,))
    t = _transport(raw)
    for _ in range(2):
        resp = t.send("POST", raw.url, b"a", {})
        assert resp.body == b"hello world"
        assert "x-t" not in resp.headers  # trailers are read and dropped, as http.client does
    assert raw.connections == 1
    t.close()


@pytest.mark.parametrize(
    "script",
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",),
        (b"HTTP/1.1 200 OK\r\n\r\nok", CLOSE),  # no length: the body runs to the close
    ],
)
def test_connection_not_reused_when_the_server_closes(raw: ScriptServer, script: tuple[Any, ...]) -> None:
    raw.script(script, script)
    t = _transport(raw)
    assert t.send("POST", raw.url, b"a", {}).body == b"ok"
    assert t.send("POST", raw.url, b"b", {}).body == b"ok"
    assert raw.connections == 2
    t.close()


def test_interim_answers_are_skipped(raw: ScriptServer) -> None:
    raw.script(
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            + response(202, b"k"),
        )
    )
    t = _transport(raw)
    resp = t.send("POST", raw.url, b"a", {})
    assert (resp.status, resp.body, "link" in resp.headers) == (202, b"k", False)
    assert t.send("POST", raw.url, b"a", {}).status == 200
    assert raw.connections == 1
    t.close()


def test_body_is_capped_and_drained(raw: ScriptServer) -> None:
    raw.script(*[(response(500, b"x" * 100_000),)] * 2)
    t = _transport(raw, max_response_bytes=10)
    resp = t.send("POST", raw.url, b"a", {})
    assert (resp.status, resp.body) == (500, b"x" * 10)
    assert t.send("POST", raw.url, b"a", {}).status == 500
    assert raw.connections == 1  # drained: reused
    t.close()


def test_head_response_ends_with_its_headers(raw: ScriptServer) -> None:
    # Content-Length describes the GET body; a HEAD answer has none.
    raw.script((b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",), (response(200, b"next"),))
    t = _transport(raw, read_timeout=5)
    started = time.monotonic()
    resp = t.send("HEAD", raw.url, b"", {})
    assert (resp.status, resp.body, resp.headers["content-length"]) == (200, b"", "1234")
    assert time.monotonic() - started < 4  # not waiting for 1234 bytes
    assert t.send("POST", raw.url, b"a", {}).body == b"next"
    assert raw.connections == 1  # a clean boundary: reused
    t.close()


def test_head_response_followed_by_bytes_is_not_reused(raw: ScriptServer) -> None:
    raw.script((b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody",))
    t = _transport(raw)
    assert t.send("HEAD", raw.url, b"", {}).body == b""
    assert t.send("POST", raw.url, b"a", {}).body == b"ok"
    assert raw.connections == 2
    t.close()


@pytest.mark.parametrize("status", [204, 304])
def test_bodyless_statuses_read_no_body(raw: ScriptServer, status: int) -> None:
    raw.script((b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n" % status,))
    t = _transport(raw, read_timeout=5)
    assert t.send("POST", raw.url, b"a", {}).body == b""
    assert t.send("POST", raw.url, b"a", {}).body == b"ok"
    assert raw.connections == 1
    t.close()


def test_bytes_past_content_length_in_the_same_read_close_the_connection(raw: ScriptServer) -> None:
    raw.script(
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nWRONG",)
    )
    t = _transport(raw)
    assert t.send("POST", raw.url, b"a", {}).body == b"ok"
    assert t.send("POST", raw.url, b"b", {}).body == b"ok"  # not b"WRONG"
    assert raw.connections == 2
    t.close()


def test_bytes_written_later_are_caught_by_urllib3s_check_before_reuse(raw: ScriptServer) -> None:
    # The extra answer arrives after the message was read: only a readability
    # check right before reuse (pool_access.Connections.take, as urllib3's is_connection_dropped) sees it.
    raw.script((b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0.2, response(200, b"WRONG")))
    t = _transport(raw)
    assert t.send("POST", raw.url, b"a", {}).body == b"ok"
    time.sleep(0.5)
    assert t.send("POST", raw.url, b"b", {}).body == b"ok"
    assert raw.connections == 2
    t.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header line\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX : 1\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        # obs-fold: refused, as Node.js refuses it
        b"HTTP/1.1 503 No\r\nRetry-After:\r\n  7\r\nContent-Length: 0\r\n\r\n",
        b"\x00\xffNOT HTTP AT ALL\r\n\r\n",
    ],
)
def test_malformed_responses_are_response_errors_at_once(raw: ScriptServer, reply: bytes) -> None:
    raw.script((reply,))  # the connection stays open: waiting would hit read_timeout
    t = _transport(raw, read_timeout=5)
    with pytest.raises(ResponseError) as info:
        t.send("POST", raw.url, b"a", {})
    assert info.value.__cause__ is not None
    assert str(info.value).isprintable()
    assert t.send("POST", raw.url, b"b", {}).status == 200  # the broken connection was not reused
    assert raw.connections == 2
    t.close()


@pytest.mark.parametrize(
    "script",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", CLOSE),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", CLOSE),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", CLOSE),
        (b"HTTP/1.1 200 OK\r\nContent-Le", CLOSE),
    ],
)
def test_truncated_responses_are_response_errors(raw: ScriptServer, script: tuple[Any, ...]) -> None:
    raw.script(script)
    with pytest.raises(ResponseError, match="closed mid-response") as info:
        _transport(raw).send("POST", raw.url, b"a", {})
    assert info.value.__cause__ is not None


def test_connector_delivers_through_the_send_path(raw: ScriptServer) -> None:
    with HttpSinkConnector(HttpSinkConfig(raw.url, max_workers=4)) as sink:
        futures = [sink.put(ConnectRecord({"i": i}, {"topic": "t"})) for i in range(50)]
        results = [f.result(10) for f in futures]
    assert all(r.status == 200 for r in results)
    assert len(raw.requests) == 50
    assert all(r.header("extension") == [b'{"topic":"t"}'] for r in raw.requests)
    assert raw.connections <= 4


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data)


def _raw_deflate(data: bytes) -> bytes:
    obj = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return obj.compress(data) + obj.flush()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", lambda d: __import__("gzip").compress(d)),
        ("deflate", _deflate),
        ("deflate", _raw_deflate),  # urllib3 accepts raw deflate too
        ("identity", lambda d: d),
        ("x-unknown", lambda d: d),  # not decoded, as urllib3 does not
    ],
)
def test_content_encoding_is_decoded_like_the_urlopen_path(
    raw: ScriptServer, encoding: str, encode: Any
) -> None:
    text = b'{"accepted": true, "pad": "' + b"z" * 5000 + b'"}'
    reply = response(200, encode(text), [("Content-Encoding", encoding)])
    raw.script((reply,), (reply,))
    ours = _transport(raw, max_response_bytes=100).send("POST", raw.url, b"a", {})
    theirs = RequestsTransport(requests.Session(), HttpSinkConfig(raw.url, max_response_bytes=100)).send(
        "POST", raw.url, b"a", {}
    )
    assert (ours.status, ours.body) == (theirs.status, theirs.body)
    assert ours.body == text[:100]


def test_corrupt_gzip_is_a_response_error(raw: ScriptServer) -> None:
    raw.script((response(200, b"\x1f\x8bnot gzip at all", [("Content-Encoding", "gzip")]),))
    with pytest.raises(ResponseError) as info:
        _transport(raw).send("POST", raw.url, b"a", {})
    assert "DecodeError" in type(info.value.__cause__).__name__


def _send_in_thread(
    t: Urllib3Transport, url: str, body: bytes
) -> tuple[threading.Thread, list[BaseException]]:
    # A send on its own thread (for abort() to interrupt); what it raises lands in the list.
    errors: list[BaseException] = []

    def send() -> None:
        try:
            t.send("POST", url, body, {})
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=send)
    worker.start()
    return worker, errors


def test_abort_unblocks_a_read_in_flight(raw: ScriptServer) -> None:
    raw.script((b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", 30.0))
    t = _transport(raw, read_timeout=30)
    worker, errors = _send_in_thread(t, raw.url, b"a")
    time.sleep(0.3)
    started = time.monotonic()
    t.abort()
    worker.join(5)
    assert not worker.is_alive() and time.monotonic() - started < 5
    assert isinstance(errors[0], ResponseError)


def test_abort_of_a_reused_connection_does_not_reconnect(raw: ScriptServer) -> None:
    # The shut socket reads as a stale keep-alive close (NoResponse): not a reason to connect again.
    raw.script((response(200, b"ok"),), (30.0, response(200, b"late")))
    t = _transport(raw, read_timeout=30)
    assert t.send("POST", raw.url, b"a", {}).status == 200  # the next send reuses this connection
    worker, errors = _send_in_thread(t, raw.url, b"b")
    time.sleep(0.3)
    t.abort()
    worker.join(5)
    assert not worker.is_alive()
    assert isinstance(errors[0], ResponseError) and "closed before the request" in str(errors[0]), errors
    assert (t.reconnects, raw.connections) == (0, 1)


# -- https: the same path over an SSLSocket -------------------------------------------------


def test_https_takes_the_same_path_and_keeps_alive(tls: ScriptServer, ca: trustme.CA, tmp_path: Any) -> None:
    reply = response(200, chunked(b"over ", b"tls"), [("Transfer-Encoding", "chunked")])
    tls.script((reply,), (reply,))
    t = _tls_transport(tls, ca, tmp_path)
    assert [t.send("POST", tls.url, b"a", {}).body for _ in range(3)] == [b"over tls", b"over tls", b"ok"]
    assert tls.connections == 1
    t.close()


def test_https_response_is_judged_by_llhttp(tls: ScriptServer, ca: trustme.CA, tmp_path: Any) -> None:
    both = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
    tls.script((both + chunked(b"hello"),))
    t = _tls_transport(tls, ca, tmp_path, read_timeout=5)
    with pytest.raises(ResponseError, match="Content-Length can't be present with Transfer-Encoding"):
        t.send("POST", tls.url, b"a", {})
    assert t.send("POST", tls.url, b"a", {}).body == b"ok"
    assert tls.connections == 2
    t.close()


def test_https_certificate_errors_are_classified_as_before(tls: ScriptServer) -> None:
    t = _transport(tls)  # the system CAs do not know trustme's
    with pytest.raises(EndpointUnavailableError, match="TLS") as info:
        t.send("POST", tls.url, b"a", {})
    assert not info.value.retryable
    assert "CERTIFICATE_VERIFY_FAILED" in repr(info.value.__cause__)
    assert tls.requests == []


def test_https_hostname_mismatch_is_not_retryable(ca: trustme.CA, tmp_path: Any) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("other.example").configure_cert(ctx)
    with ScriptServer(ssl_context=ctx) as srv:
        t = _tls_transport(srv, ca, tmp_path)
        with pytest.raises(EndpointUnavailableError) as info:
            t.send("POST", srv.url, b"a", {})
        assert not info.value.retryable
        assert srv.requests == []


def test_same_status_and_body_as_the_urlopen_path(raw: ScriptServer) -> None:
    replies = [
        response(201, b"created"),
        response(503, b"busy", [("Retry-After", "3")]),
        response(200, chunked(b"a" * 70_000, b"b"), [("Transfer-Encoding", "chunked")]),
        b"HTTP/1.0 202 Accepted\r\n\r\nold style",
    ]
    for reply in replies:
        raw.script((reply, CLOSE), (reply, CLOSE))
        ours = _transport(raw).send("POST", raw.url, b"a", {})
        theirs = RequestsTransport(requests.Session(), HttpSinkConfig(raw.url)).send(
            "POST", raw.url, b"a", {}
        )
        assert (ours.status, ours.reason, ours.body) == (theirs.status, theirs.reason, theirs.body)
        assert dict(ours.headers) == dict(theirs.headers)


@pytest.mark.parametrize("pause", [0.0, 0.2])
def test_https_bytes_in_a_later_tls_record_are_caught_before_reuse(
    tls: ScriptServer, ca: trustme.CA, tmp_path: Any, pause: float
) -> None:
    # Each sendall below is its own TLS record; a recv returns one record at most, so
    # the junk waits in the kernel (not in OpenSSL) where urllib3's check sees it.
    tls.script((b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", pause, response(200, b"WRONG")))
    t = _tls_transport(tls, ca, tmp_path)
    assert t.send("POST", tls.url, b"a", {}).body == b"ok"
    time.sleep(0.5)
    assert t.send("POST", tls.url, b"b", {}).body == b"ok"  # not b"WRONG"
    assert tls.connections == 2
    t.close()
