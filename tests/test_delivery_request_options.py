"""Request options: headers, header_fn, Basic and bearer auth, TLS, gzip, success_when."""

from __future__ import annotations

import base64
import gzip
import http.server
import json
import logging
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from eventmesh_http_sink import (
    BusinessError,
    ConfigError,
    ConnectRecord,
    EndpointUnavailableError,
    HttpSinkConfig,
    HttpSinkConnector,
    HttpStatusError,
    InvalidRecordError,
    RetryConfig,
    SinkError,
)
from eventmesh_http_sink.testing import FaultServer, Reply
from eventmesh_http_sink.wire.transport import Urllib3Transport

FAST_RETRY = RetryConfig(max_retries=2, initial_backoff=0.001, max_backoff=0.01)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as s:
        yield s


def test_static_headers_header_fn_and_basic_auth(server: FaultServer) -> None:
    cfg = HttpSinkConfig(
        server.url,
        headers={"X-Static": "1"},
        header_fn=lambda record: {"X-Tenant": record.extensions["tenant"]},
        auth=("user", "p:ss"),
    )
    with HttpSinkConnector(cfg) as sink:
        sink.put(ConnectRecord({"a": 1}, extensions={"tenant": "acme"})).result(5)
    headers = server.requests[0].headers
    assert headers["x-static"] == "1" and headers["x-tenant"] == "acme"
    assert headers["authorization"] == "Basic " + base64.b64encode(b"user:p:ss").decode()


@pytest.mark.parametrize(
    ("returned", "match"),
    [
        ({"X-Evil": "a\r\nX-Injected: 1"}, "CR, LF or NUL"),
        ({"X-Name": "Zoë ☃"}, "latin-1"),
        ({"Bad Name": "x"}, "not a valid HTTP token"),
        (["not", "a", "mapping"], "must return a mapping"),
    ],
)
def test_header_fn_bad_values_are_refused_by_put(server: FaultServer, returned: object, match: str) -> None:
    cfg = HttpSinkConfig(server.url, header_fn=lambda record: returned)  # type: ignore[arg-type,return-value]
    with HttpSinkConnector(cfg) as sink:
        with pytest.raises(InvalidRecordError, match=match) as info:
            sink.put(ConnectRecord({"a": 1}, record_id="hdr-1"))
        assert info.value.record_id == "hdr-1"
    assert not server.requests


def test_bearer_token_callable_is_refreshed_after_a_401(server: FaultServer) -> None:
    tokens = iter(["expired", "fresh", "never"])
    calls: list[str] = []

    def token() -> str:
        calls.append("x")
        return next(tokens)

    server.responder = lambda request: (
        Reply(200) if request.headers.get("authorization") == "Bearer fresh" else Reply(401)
    )
    with HttpSinkConnector(HttpSinkConfig(server.url, bearer_token=token)) as sink:
        result = sink.put(ConnectRecord({"a": 1})).result(5)
        assert sink.put(ConnectRecord({"a": 2})).result(5).status == 200  # the fresh token is kept
    assert result.status == 200
    assert [r.headers["authorization"] for r in server.requests] == [
        "Bearer expired",
        "Bearer fresh",
        "Bearer fresh",
    ]
    assert len(calls) == 2


def test_a_static_bearer_token_is_not_retried_on_401(server: FaultServer) -> None:
    server.responder = lambda request: Reply(401)
    sink = HttpSinkConnector(HttpSinkConfig(server.url, bearer_token="s3cret"))
    with sink, pytest.raises(HttpStatusError) as info:
        sink.put(ConnectRecord({"a": 1})).result(5)
    assert info.value.status == 401 and len(server.requests) == 1
    assert server.requests[0].headers["authorization"] == "Bearer s3cret"


def test_secrets_stay_out_of_reprs() -> None:
    cfg = HttpSinkConfig("http://a/", bearer_token="s3cret-token")
    assert "s3cret-token" not in repr(cfg)
    cfg = HttpSinkConfig("http://a/", auth=("user", "hunter2"))
    assert "hunter2" not in repr(cfg)


def test_gzip_at_or_above_the_threshold(server: FaultServer) -> None:
    big = {"text": "x" * 2000}
    cfg = HttpSinkConfig(server.url, compression="gzip", compress_min_bytes=1024)
    with HttpSinkConnector(cfg) as sink:
        sink.put(ConnectRecord(big)).result(5)
        sink.put(ConnectRecord({"small": 1})).result(5)
    large, small = server.requests
    assert large.headers["content-encoding"] == "gzip"
    assert len(large.body) < 1024
    assert json.loads(gzip.decompress(large.body)) == big  # the receiver sees the original
    assert "content-encoding" not in small.headers and json.loads(small.body) == {"small": 1}


def test_success_when_turns_a_2xx_into_a_business_error(server: FaultServer) -> None:
    server.responder = lambda request: Reply(200, body=b'{"ok": false}')
    cfg = HttpSinkConfig(
        server.url, success_when=lambda status, headers, body: json.loads(body)["ok"], retry=FAST_RETRY
    )
    with HttpSinkConnector(cfg) as sink, pytest.raises(BusinessError) as info:
        sink.put(ConnectRecord({"a": 1})).result(5)
    assert info.value.status == 200 and len(server.requests) == 1  # not retried by default


def test_business_errors_are_retried_when_asked(server: FaultServer) -> None:
    server.plan("biz", Reply(200, body=b"FAIL"), Reply(200, body=b"OK"))
    retry = RetryConfig(max_retries=2, initial_backoff=0.001, max_backoff=0.01, retry_business_errors=True)
    cfg = HttpSinkConfig(server.url, success_when=lambda s, h, body: body == b"OK", retry=retry)
    with HttpSinkConnector(cfg) as sink:
        result = sink.put(ConnectRecord({"a": 1}, record_id="biz")).result(5)
    assert result.attempts == 2 and result.response_body == b"OK"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"header_fn": "nope"}, "header_fn"),
        ({"success_when": 3}, "success_when"),
        ({"compression": "br"}, "compression"),
        ({"compress_min_bytes": -1}, "compress_min_bytes"),
        ({"auth": ("only-user",)}, "auth"),
        ({"bearer_token": ""}, "bearer_token"),
        ({"bearer_token": "a\nb"}, "bearer_token"),
        ({"auth": ("u", "p"), "bearer_token": "t"}, "auth"),
        ({"auth": ("u", "p"), "headers": {"Authorization": "x"}}, "headers"),
    ],
)
def test_request_option_config_is_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        HttpSinkConfig("http://a/", **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


# -- TLS with a throw-away CA -------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _https_server(ca: trustme.CA, require_client_cert: bool) -> http.server.ThreadingHTTPServer:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    if require_client_cert:
        ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd


@pytest.fixture
def https(ca: trustme.CA) -> Iterator[str]:
    httpd = _https_server(ca, require_client_cert=False)
    yield f"https://127.0.0.1:{httpd.server_address[1]}/hook"
    httpd.shutdown()
    httpd.server_close()


def test_tls_verifies_against_ca_certs(https: str, ca: trustme.CA, tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with HttpSinkConnector(HttpSinkConfig(https, ca_certs=str(bundle))) as sink:
        assert sink.put(ConnectRecord({"a": 1})).result(5).status == 200


def test_tls_refuses_an_unknown_ca_without_retrying(https: str) -> None:
    sink = HttpSinkConnector(HttpSinkConfig(https, retry=FAST_RETRY))
    with sink, pytest.raises(EndpointUnavailableError, match="TLS") as info:
        sink.put(ConnectRecord({"a": 1})).result(5)
    assert not info.value.retryable


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verify_false_is_allowed_when_asked_and_warns_once(
    https: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Urllib3Transport, "_insecure_warned", False)
    with caplog.at_level(logging.WARNING, logger="eventmesh_http_sink"):
        for _ in range(2):
            with HttpSinkConnector(HttpSinkConfig(https, verify=False)) as sink:
                assert sink.put(ConnectRecord({"a": 1})).result(5).status == 200
    assert [r.getMessage() for r in caplog.records].count(
        "TLS certificate verification is disabled (verify=False)"
    ) == 1


def test_client_certificate(ca: trustme.CA, tmp_path: Path) -> None:
    httpd = _https_server(ca, require_client_cert=True)
    url = f"https://127.0.0.1:{httpd.server_address[1]}/"
    bundle, client = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.cert_pem.write_to_path(str(bundle))
    ca.issue_cert("client@example.com").private_key_and_cert_chain_pem.write_to_path(str(client))
    try:
        with HttpSinkConnector(HttpSinkConfig(url, ca_certs=str(bundle), client_cert=str(client))) as sink:
            assert sink.put(ConnectRecord({"a": 1})).result(5).status == 200
        cfg = HttpSinkConfig(url, ca_certs=str(bundle), retry=RetryConfig(max_retries=0))
        with HttpSinkConnector(cfg) as sink, pytest.raises(SinkError):
            sink.put(ConnectRecord({"a": 1})).result(5)
    finally:
        httpd.shutdown()
        httpd.server_close()
