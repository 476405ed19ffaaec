"""The happy path, what goes on the wire, and the one-pool promise."""

from __future__ import annotations

import concurrent.futures
import contextvars
import json
import threading

import pytest

from eventmesh_http_sink import ConnectRecord, HttpStatusError, InvalidRecordError, SendResult, SinkError
from eventmesh_http_sink.testing import Reply


def test_put_returns_future_and_callback_reports_success(server, connector_factory, recorder):
    server.script(Reply(201, body=b'{"accepted":true}'))
    sink = connector_factory(server.url + "events?tenant=a&x=1")
    record = ConnectRecord({"order": 7}, {"topic": "orders"}, callback=recorder)
    future = sink.put(record)

    assert isinstance(future, concurrent.futures.Future)
    result = future.result(timeout=5)
    assert sink.flush(timeout=5)
    assert isinstance(result, SendResult)
    assert result.record_id == record.record_id
    assert result.topic == "orders"
    assert result.status == 201
    assert result.attempts == 1
    assert result.elapsed > 0
    assert result.response_body == b'{"accepted":true}'
    assert result.url == server.url + "events?tenant=a&x=1"
    assert recorder.successes[record.record_id] == result
    recorder.assert_exactly_once([record.record_id])

    (request,) = server.requests
    # EventMesh's Java sink drops the query string; ours keeps it.
    assert request.path == "/events?tenant=a&x=1"
    assert request.method == "POST"
    assert request.key == record.record_id
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == {"order": 7}
    assert json.loads(request.headers["extension"]) == {"topic": "orders"}


@pytest.mark.parametrize(
    ("data", "body", "content_type"),
    [
        (b"\x00\x01raw", b"\x00\x01raw", "application/octet-stream"),
        ("héllo", "héllo".encode(), "text/plain; charset=utf-8"),
        ([1, "two", None], b'[1,"two",null]', "application/json"),
        (bytearray(b"ba"), b"ba", "application/octet-stream"),
    ],
)
def test_body_encoding_by_data_type(server, connector_factory, data, body, content_type):
    sink = connector_factory(server.url)
    sink.put(ConnectRecord(data)).result(timeout=5)
    (request,) = server.requests
    assert request.body == body
    assert request.headers["content-type"] == content_type
    assert "extension" not in request.headers


def test_extension_header_is_ascii_json(server, connector_factory):
    sink = connector_factory(server.url)
    sink.put(ConnectRecord("d", {"topic": "t", "ü": "ß ☃", "n": 3})).result(timeout=5)
    (request,) = server.requests
    assert request.headers["extension"].isascii()
    assert json.loads(request.headers["extension"]) == {"topic": "t", "ü": "ß ☃", "n": 3}


@pytest.mark.parametrize("extensions", [{"topic": "x\r\nX-Injected: 1"}, {"a\nb": "v"}, {"k": "nul\0"}])
def test_header_injection_through_extensions_is_refused(server, connector_factory, extensions):
    sink = connector_factory(server.url)
    record = ConnectRecord("d", extensions, record_id="rec-inject")
    with pytest.raises(InvalidRecordError, match="rec-inject"):
        sink.put(record)
    assert sink.stats().submitted == 0
    assert server.requests == []


def test_static_headers_and_user_agent(server, connector_factory):
    sink = connector_factory(server.url, headers={"X-Tenant": "t1"}, method="PUT")
    sink.put(ConnectRecord("d")).result(timeout=5)
    (request,) = server.requests
    assert request.method == "PUT"
    assert request.headers["x-tenant"] == "t1"
    assert request.headers["user-agent"].startswith("eventmesh-http-sink/")


def test_future_exception_is_the_context_error(server, connector_factory, recorder):
    server.script(Reply(422, body=b"bad field"))
    sink = connector_factory(server.url)
    record = ConnectRecord("x", {"topic": "t"}, callback=recorder)
    future = sink.put(record)
    with pytest.raises(HttpStatusError) as info:
        future.result(timeout=5)
    sink.flush(5)
    context = recorder.failures[record.record_id]
    assert context.error is info.value
    assert context.status == 422
    assert context.attempts == 1
    assert context.topic == "t"
    assert context.url == server.url
    assert info.value.body == b"bad field"
    assert future.exception() is context.error


def test_idempotency_key_is_unique_per_record(server, connector_factory):
    sink = connector_factory(server.url)
    records = [ConnectRecord(i) for i in range(50)]
    for future in sink.put_all(records):
        future.result(timeout=5)
    assert sorted(server.keys()) == sorted(r.record_id for r in records)
    assert len(set(server.keys())) == 50


def test_thousand_records_use_at_most_pool_maxsize_connections(server, connector_factory, recorder):
    sink = connector_factory(server.url, max_workers=4, pool_maxsize=4)
    records = [ConnectRecord({"i": i}, callback=recorder) for i in range(1000)]
    sink.put_all(records)
    assert sink.flush(timeout=30)
    recorder.assert_exactly_once([r.record_id for r in records])
    assert len(recorder.successes) == 1000
    assert len(server.requests) == 1000
    assert 1 <= server.connections <= 4
    assert len({r.connection for r in server.requests}) <= 4


def test_keep_alive_off_closes_each_connection(server, connector_factory):
    sink = connector_factory(server.url, max_workers=1, keep_alive=False)
    for i in range(5):
        sink.put(ConnectRecord(i)).result(timeout=5)
    assert server.connections == 5
    assert all(r.headers["connection"] == "close" for r in server.requests)


def test_callbacks_run_in_the_callers_context(server, connector_factory):
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[tuple[str, str]] = []
    done = threading.Event()

    class CB:
        def on_success(self, result):
            seen.append(("callback", var.get()))

        def on_exception(self, context):
            seen.append(("callback-error", var.get()))

    sink = connector_factory(server.url)
    var.set("request-42")
    future = sink.put(ConnectRecord("x", callback=CB()))
    future.add_done_callback(lambda f: (seen.append(("done", var.get())), done.set()))
    var.set("changed-after-put")
    assert done.wait(5)
    assert sink.flush(5)
    assert sorted(seen) == [("callback", "request-42"), ("done", "request-42")]


def test_response_body_is_capped(server, connector_factory, recorder):
    server.script(Reply(200, body=b"a" * 5000), Reply(500, body=b"e" * 5000))
    sink = connector_factory(server.url, max_workers=1, max_response_bytes=100, retry=_no_retry())
    ok = sink.put(ConnectRecord(1)).result(timeout=5)
    with pytest.raises(HttpStatusError) as info:
        sink.put(ConnectRecord(2)).result(timeout=5)
    assert ok.response_body == b"a" * 100
    assert info.value.body == b"e" * 100
    # The connection was drained, not dropped: both went over one connection.
    assert server.connections == 1


def test_stats_add_up(server, connector_factory):
    server.script(Reply(200), Reply(404), Reply(200))
    sink = connector_factory(server.url, max_workers=1)
    futures = sink.put_all([ConnectRecord(i) for i in range(3)])
    concurrent.futures.wait(futures, timeout=5)
    assert sink.flush(5)
    stats = sink.stats()
    assert stats.submitted == 3
    assert stats.succeeded == 2
    assert stats.failed == 1
    assert stats["pending"] == 0
    assert stats.in_flight == 0
    assert stats.submitted == stats.succeeded + stats.failed + stats.pending
    assert stats.as_dict()["failed"] == 1


def test_unexpected_transport_bug_still_reports_an_outcome(server, connector_factory, recorder):
    class Broken:
        def send(self, method, url, body, headers):
            raise ZeroDivisionError("bug")

        def close(self):
            pass

        def abort(self):
            pass

    sink = connector_factory(server.url, transport=Broken(), retry=_no_retry())
    record = ConnectRecord(1, callback=recorder)
    with pytest.raises(SinkError) as info:
        sink.put(record).result(timeout=5)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    sink.flush(5)
    recorder.assert_exactly_once([record.record_id])


def _no_retry():
    from eventmesh_http_sink import RetryConfig

    return RetryConfig(max_retries=0)

