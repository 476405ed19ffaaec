"""Safe by default: TLS verified, no redirects followed, secrets kept out of logs and errors."""

from __future__ import annotations

import logging
import ssl

import pytest
import trustme

from eventmesh_http_sink import (
    ConnectRecord,
    EndpointUnavailableError,
    HttpSinkConfig,
    HttpStatusError,
    RetryConfig,
)
from eventmesh_http_sink.testing import FaultServer, Reply

SECRET = "s3cr3t-t0ken-value"


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def tls_server(ca):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    with FaultServer(ssl_context=context) as srv:
        yield srv


def test_tls_is_verified_by_default(tls_server, connector_factory):
    sink = connector_factory(tls_server.url, retry=RetryConfig(max_retries=3, initial_backoff=0.01))
    error = sink.put(ConnectRecord("x")).exception(timeout=10)
    assert isinstance(error, EndpointUnavailableError)
    assert "CERTIFICATE_VERIFY_FAILED" in repr(error.__cause__)
    assert tls_server.requests == []  # nothing was sent over the unverified channel
    sink.flush(5)
    assert sink.stats().retried == 0  # a bad certificate does not get better by retrying


def test_tls_with_the_right_ca_succeeds(tls_server, connector_factory, ca, tmp_path):
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    sink = connector_factory(tls_server.url, ca_certs=str(bundle))
    assert sink.put(ConnectRecord({"secure": True})).result(timeout=10).status == 200
    assert tls_server.requests[0].body == b'{"secure":true}'


def test_tls_verification_can_be_turned_off_explicitly(tls_server, connector_factory, caplog):
    import warnings

    import urllib3

    from eventmesh_http_sink.wire.transport import Urllib3Transport

    Urllib3Transport._insecure_warned = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
        with caplog.at_level(logging.WARNING, logger="eventmesh_http_sink"):
            sink = connector_factory(tls_server.url, verify=False)
            assert sink.put(ConnectRecord("x")).result(timeout=10).status == 200
            sink.close()
    assert "verification is disabled" in caplog.text


def test_secrets_never_reach_logs_reprs_or_errors(server, connector_factory, caplog, recorder):
    server.script(Reply(503), Reply(401, body=b"denied"))
    config_headers = {"Authorization": f"Bearer {SECRET}", "X-Api-Key": SECRET, "X-Custom": SECRET}
    sink = connector_factory(
        server.url, headers=config_headers, sensitive_headers=["X-Custom"],
        retry=RetryConfig(initial_backoff=0.01),
    )
    record = ConnectRecord("x", callback=recorder)
    with caplog.at_level(logging.DEBUG, logger="eventmesh_http_sink"):
        error = sink.put(record).exception(timeout=5)
        sink.flush(5)
    assert isinstance(error, HttpStatusError)
    # The secret did reach the server (it is a real credential) ...
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    # ... and nowhere else.
    context = recorder.failures[record.record_id]
    texts = [caplog.text, repr(sink), repr(sink.config), str(error), repr(error), repr(context)]
    assert "retrying" in caplog.text  # the DEBUG retry line was logged, without the secret
    for text in texts:
        assert SECRET not in text


def test_urls_with_credentials_are_refused():
    from eventmesh_http_sink import ConfigError

    with pytest.raises(ConfigError, match="credentials") as info:
        HttpSinkConfig(f"https://user:{SECRET}@hooks.example/")
    assert SECRET not in str(info.value)
