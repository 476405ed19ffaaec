"""Request framing belongs to the library: each header name once, user values replace defaults."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from eventmesh_http_sink import (
    ConfigError,
    ConnectRecord,
    HttpSinkConfig,
    HttpSinkConnector,
    InvalidRecordError,
    SinkError,
)
from eventmesh_http_sink.wire.headers import USER_AGENT, encode_request
from tests.wire_servers import Request, ScriptServer


@pytest.fixture
def raw() -> Iterator[ScriptServer]:
    with ScriptServer() as srv:
        yield srv


def _one_request(raw: ScriptServer, **config: object) -> Request:
    with HttpSinkConnector(HttpSinkConfig(raw.url, **config)) as sink:  # type: ignore[arg-type]
        assert sink.put(ConnectRecord({"a": 1})).result(timeout=10).status == 200
    (request,) = raw.requests
    names = request.names()
    assert len(names) == len(set(names)), f"a header name went out twice: {names}"
    return request


def test_defaults_go_out_once(raw: ScriptServer) -> None:
    request = _one_request(raw)
    assert request.header("User-Agent") == [USER_AGENT.encode()]
    assert request.header("Accept-Encoding") == [b"identity"]
    assert request.header("Content-Type") == [b"application/json"]
    assert request.header("Host") == [f"127.0.0.1:{raw.port}".encode()]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("user-agent", "mine/1"),
        ("CONTENT-TYPE", "application/vnd.mine+json"),
        ("Accept-encoding", "gzip"),
        ("HOST", "hooks.example"),
    ],
)
def test_a_configured_header_replaces_the_default(raw: ScriptServer, name: str, value: str) -> None:
    request = _one_request(raw, headers={name: value})
    assert request.header(name) == [value.encode()]


@pytest.mark.parametrize(
    ("name", "value"),
    [("user-agent", "fn/1"), ("content-type", "text/plain"), ("Host", "fn.example"), ("X-Static", "from-fn")],
)
def test_a_header_fn_value_replaces_defaults_and_configured_headers(
    raw: ScriptServer, name: str, value: str
) -> None:
    request = _one_request(raw, headers={"x-static": "configured"}, header_fn=lambda record: {name: value})
    assert request.header(name) == [value.encode()]


def test_header_names_are_case_insensitive_in_config() -> None:
    with pytest.raises(ConfigError, match="headers: header 'x-a' is given twice"):
        HttpSinkConfig("http://h/", headers={"X-A": "1", "x-a": "2"})


def test_header_fn_giving_a_name_twice_is_refused_naming_the_record(raw: ScriptServer) -> None:
    with HttpSinkConnector(HttpSinkConfig(raw.url, header_fn=lambda r: {"X-A": "1", "x-A": "2"})) as sink:
        record = ConnectRecord("x")
        with pytest.raises(InvalidRecordError, match=f"record '{record.record_id}'.*given twice"):
            sink.put(record)


def test_keep_alive_off_sends_one_connection_close(raw: ScriptServer) -> None:
    request = _one_request(raw, keep_alive=False)
    assert request.header("Connection") == [b"close"]


def test_encode_request_refuses_framing_headers_from_a_direct_caller() -> None:
    with pytest.raises(SinkError, match="Transfer-Encoding"):
        encode_request("POST", "/", "h", {"Transfer-Encoding": "chunked"}, b"x", close=False)
    data, close = encode_request(
        "POST", "/", "h", {"host": "other", "Connection": "close"}, b"x", close=False
    )
    assert close
    assert data == (
        b"POST / HTTP/1.1\r\nAccept-Encoding: identity\r\nhost: other\r\n"
        b"Connection: close\r\nContent-Length: 1\r\n\r\nx"
    )


def _lines(request: bytes) -> tuple[bytes, list[bytes], bytes]:
    head, _, body = request.partition(b"\r\n\r\n")
    first, *fields = head.split(b"\r\n")
    return first, sorted(fields), body


@pytest.mark.parametrize(
    "headers",
    [
        {"User-Agent": USER_AGENT, "Content-Type": "application/json", "Idempotency-Key": "k-1"},
        {"Idempotency-Key": "k-2", "extension": '{"topic":"t"}', "X-A": "1"},
        {"extension": '{"topic":"t"}'},
        {"X-Only": "static"},
        {"host": "other", "Connection": "close", "Idempotency-Key": "k-3"},
        {"ACCEPT-ENCODING": "gzip", "Idempotency-Key": "k-4"},
    ],
)
def test_request_heads_send_what_encode_request_sends(headers: dict[str, str]) -> None:
    from eventmesh_http_sink.wire.headers import RequestHeads

    heads = RequestHeads()
    for body in (b"x", b'{"a":1}', b""):  # the second and third reuse the cached head
        for close in (False, True):
            got, got_close = heads.encode("POST", "/p?q=1", "h:81", headers, body, close=close)
            want, want_close = encode_request("POST", "/p?q=1", "h:81", headers, body, close=close)
            assert got_close == want_close
            assert _lines(got) == _lines(want)
            assert got.endswith(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def test_request_heads_see_a_changed_value_and_refuse_framing_headers_every_time() -> None:
    from eventmesh_http_sink.wire.headers import RequestHeads

    heads = RequestHeads()
    first, _ = heads.encode("POST", "/", "h", {"Authorization": "Bearer a"}, b"x", close=False)
    second, _ = heads.encode("POST", "/", "h", {"Authorization": "Bearer b"}, b"x", close=False)
    assert b"Authorization: Bearer a\r\n" in first
    assert b"Authorization: Bearer b\r\n" in second
    for _ in range(2):
        with pytest.raises(SinkError, match="Transfer-Encoding"):
            heads.encode("POST", "/", "h", {"Transfer-Encoding": "chunked"}, b"x", close=False)


def test_request_heads_stop_caching_when_every_request_has_its_own_head() -> None:
    from eventmesh_http_sink.wire.headers import RequestHeads

    heads = RequestHeads()
    for i in range(2 * RequestHeads.MAX_HEADS + 1):  # e.g. a header_fn giving each record its own
        data, _ = heads.encode("POST", "/", "h", {"X-Seq": str(i)}, b"x", close=False)
        assert f"X-Seq: {i}\r\n".encode() in data
    assert not heads.caching
    data, _ = heads.encode("POST", "/", "h", {"X-Seq": "last"}, b"x", close=False)
    assert b"X-Seq: last\r\n" in data


def test_request_heads_keep_caching_with_signing_tracing_and_cloudevents_binary() -> None:
    # Issue 14: those features give every request its own values; they are not part of the head.
    from eventmesh_http_sink.wire.headers import RequestHeads

    heads = RequestHeads()
    for i in range(4 * RequestHeads.MAX_HEADS):
        headers = {
            "User-Agent": "u",
            "ce-id": f"id-{i}",
            "ce-time": f"t{i}",
            "ce-source": "/s",
            "Idempotency-Key": f"k{i}",
            "webhook-id": f"k{i}",
            "webhook-timestamp": str(i),
            "webhook-signature": f"v1,{i}",
            "traceparent": f"00-{i:032x}-{i:016x}-01",
            "tracestate": f"a={i}",
        }
        data, _ = heads.encode("POST", "/", "h", headers, b"xy", close=False)
        want, _ = encode_request("POST", "/", "h", headers, b"xy", close=False)
        assert _lines(data) == _lines(want)
        assert data.endswith(b"Content-Length: 2\r\n\r\nxy")
    assert heads.caching
