"""Each way a delivery can fail maps to one error class, and still gets exactly one callback."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from eventmesh_http_sink import (
    ConnectRecord,
    ConnectTimeoutError,
    EndpointUnavailableError,
    HttpStatusError,
    ReadTimeoutError,
    ResponseError,
    RetryConfig,
)
from eventmesh_http_sink.testing import Reply, free_port

NO_RETRY = RetryConfig(max_retries=0)


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    """A port whose listen backlog is full: connects to it hang until they time out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(c)
    yield port
    for c in fillers:
        c.close()
    listener.close()


def _fail_one(sink, recorder):
    record = ConnectRecord("payload", callback=recorder)
    future = sink.put(record)
    error = future.exception(timeout=10)
    assert sink.flush(10)
    recorder.assert_exactly_once([record.record_id])
    context = recorder.failures[record.record_id]
    assert context.error is error
    assert context.attempts == 1
    return error, context


@pytest.mark.parametrize("status", [400, 401, 404, 409, 500, 503])
def test_non_2xx_is_http_status_error(server, connector_factory, recorder, status):
    server.script(Reply(status, body=b"why"))
    error, context = _fail_one(connector_factory(server.url, retry=NO_RETRY), recorder)
    assert isinstance(error, HttpStatusError)
    assert error.status == status == context.status
    assert error.body == b"why"


def test_redirect_is_not_followed(server, connector_factory, recorder):
    server.script(Reply(302, headers={"Location": "http://elsewhere.invalid/steal"}))
    error, _ = _fail_one(connector_factory(server.url, retry=NO_RETRY), recorder)
    assert isinstance(error, HttpStatusError)
    assert error.status == 302
    assert error.location == "http://elsewhere.invalid/steal"
    assert "elsewhere.invalid" in str(error)
    assert len(server.requests) == 1


def test_refused_is_endpoint_unavailable(connector_factory, recorder):
    url = f"http://127.0.0.1:{free_port()}/"
    error, context = _fail_one(connector_factory(url, retry=NO_RETRY), recorder)
    assert isinstance(error, EndpointUnavailableError)
    assert error.__cause__ is not None
    assert context.status is None
    assert context.url == url


def test_unresolvable_is_endpoint_unavailable(connector_factory, recorder):
    error, _ = _fail_one(connector_factory("http://no-such-host.invalid/", retry=NO_RETRY), recorder)
    assert isinstance(error, EndpointUnavailableError)


def test_connect_timeout(blackhole_port, connector_factory, recorder):
    sink = connector_factory(f"http://127.0.0.1:{blackhole_port}/", connect_timeout=0.2, retry=NO_RETRY)
    error, _ = _fail_one(sink, recorder)
    assert isinstance(error, ConnectTimeoutError)
    assert isinstance(error, TimeoutError)


def test_read_timeout(server, connector_factory, recorder):
    server.script(Reply.hang(2))
    error, _ = _fail_one(connector_factory(server.url, read_timeout=0.2, retry=NO_RETRY), recorder)
    assert isinstance(error, ReadTimeoutError)


@pytest.mark.parametrize("reply", [Reply.reset(), Reply.garbage(), Reply.truncate(), Reply(kind="close")])
def test_unreadable_response_is_response_error(server, connector_factory, recorder, reply):
    server.script(reply)
    error, _ = _fail_one(connector_factory(server.url, retry=NO_RETRY), recorder)
    assert isinstance(error, ResponseError)
    assert error.__cause__ is not None
    # Control bytes from a broken peer never reach the message (it goes to logs).
    assert str(error).isprintable()


def test_endless_body_is_not_held_in_memory(server, connector_factory):
    server.script(Reply(200, kind="endless"))
    sink = connector_factory(server.url, max_response_bytes=1000, retry=NO_RETRY)
    result = sink.put(ConnectRecord(1)).result(timeout=10)
    # The status was 2xx: delivered. Only the capped prefix is kept; the stream was cut.
    assert result.response_body == b"x" * 1000


def test_trickling_server_is_cut_by_attempt_timeout(server, connector_factory, recorder):
    server.script(Reply(200, body=b"z" * 100, delay=0.1, kind="trickle"))
    sink = connector_factory(server.url, read_timeout=5, attempt_timeout=0.5, retry=NO_RETRY)
    started = time.monotonic()
    error, _ = _fail_one(sink, recorder)
    assert isinstance(error, ReadTimeoutError)
    assert "attempt_timeout" in str(error)
    assert time.monotonic() - started < 5  # far less than the 10 s the trickle would take


def test_callback_that_raises_is_isolated(server, connector_factory, caplog):
    calls = []

    class Exploding:
        def on_success(self, result):
            calls.append(result.record_id)
            raise RuntimeError("callback bug")

        def on_exception(self, context):
            raise AssertionError("not expected")

    sink = connector_factory(server.url)
    records = [ConnectRecord(i, callback=Exploding()) for i in range(5)]
    futures = sink.put_all(records)
    assert sink.flush(5)
    assert sorted(calls) == sorted(r.record_id for r in records)
    assert all(f.result().status == 200 for f in futures)
    assert sink.stats().callback_errors == 5
    assert sink.stats().succeeded == 5
    assert "callback bug" in caplog.text
    # The connector is still usable afterwards.
    assert sink.put(ConnectRecord("after")).result(timeout=5).status == 200
