"""The attempt result store and its HTTP export endpoint (EventMesh webhook parity), over real GETs."""

from __future__ import annotations

import datetime
import json
import urllib.error
import urllib.request

import pytest

from eventmesh_http_sink import ConfigError, ConnectRecord, HttpSinkConfig, ResultStoreConfig, RetryConfig
from eventmesh_http_sink.testing import Reply, free_port

FAST = RetryConfig(max_retries=3, initial_backoff=0.01, max_backoff=0.02)


def get(url: str) -> tuple[int, dict | None]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback test URL
            body = response.read()
            return response.status, (json.loads(body) if body else None)
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read()
        return exc.code, (json.loads(body) if body else None)


def test_one_entry_per_attempt_with_eventmesh_fields(server, connector_factory, recorder):
    record = ConnectRecord({"n": 1}, callback=recorder)
    # garbage, not reset: a reset on a reused connection is resent at once, not retried
    server.plan(record.record_id, Reply(503, body=b"busy"), Reply.garbage(), Reply(201, body=b"made it"))
    sink = connector_factory(server.url, retry=FAST, result_store=ResultStoreConfig(max_size=100))
    assert sink.put(record).result(timeout=10).attempts == 3
    page = sink.export(page_num=1, page_size=10)
    assert page["pageNum"] == 1 and page["pageSize"] == 3
    items = page["pageItems"]
    assert [i["metadata"]["retryNum"] for i in items] == [0, 1, 2]
    assert [i["metadata"]["code"] for i in items] == [503, -1, 201]
    assert [i["data"] for i in items] == ["busy", None, "made it"]
    for item in items:
        meta = item["metadata"]
        assert set(meta) == {"url", "code", "message", "receivedTime", "recordId", "retryNum"}
        assert meta["recordId"] == record.record_id and meta["url"] == server.url
        assert datetime.datetime.fromisoformat(meta["receivedTime"]).tzinfo is not None
        assert 0 < len(meta["message"]) <= 256
    assert "503" in items[0]["metadata"]["message"]


def test_store_is_bounded_oldest_goes_and_messages_are_capped(server, connector_factory):
    sink = connector_factory(server.url, result_store=ResultStoreConfig(max_size=3))
    ids = [f"r{i}" for i in range(5)]
    for rid in ids:  # one at a time, so the store order is known
        sink.put(ConnectRecord("x", record_id=rid)).result(timeout=5)
    page = sink.export(1, 10)
    assert [i["metadata"]["recordId"] for i in page["pageItems"]] == ids[2:]
    server.script(Reply(404, body=b"n" * 1000))
    sink.put(ConnectRecord("x", record_id="long")).exception(timeout=5)
    last = sink.export(3, 1)["pageItems"][0]
    assert last["metadata"]["recordId"] == "long" and len(last["metadata"]["message"]) <= 256


def test_peek_pages_and_poll_removes(server, connector_factory):
    sink = connector_factory(server.url, result_store=ResultStoreConfig())
    for i in range(5):
        sink.put(ConnectRecord("x", record_id=f"r{i}")).result(timeout=5)
    ids = lambda page: [i["metadata"]["recordId"] for i in page["pageItems"]]  # noqa: E731
    assert ids(sink.export(2, 2)) == ["r2", "r3"]
    assert ids(sink.export(3, 2)) == ["r4"]
    assert sink.export(4, 2) == {"pageNum": 4, "pageSize": 0, "pageItems": []}
    assert ids(sink.export(1, 2, mode="poll")) == ["r0", "r1"]
    assert ids(sink.export(1, 10)) == ["r2", "r3", "r4"]  # polled entries are gone
    with pytest.raises(ValueError, match="mode"):
        sink.export(1, 1, mode="grab")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="page_size"):
        sink.export(1, 0)


def test_export_endpoint_over_http(server, connector_factory):
    sink = connector_factory(server.url, result_store=ResultStoreConfig(serve_port=0)).start()
    base = sink.export_url
    assert base is not None and base.startswith("http://127.0.0.1:") and base.endswith("/export")
    assert get(f"{base}?pageNum=1&pageSize=5&type=peek") == (204, None)
    for i in range(3):
        sink.put(ConnectRecord("x", record_id=f"r{i}")).result(timeout=5)
    status, page = get(f"{base}?pageNum=1&pageSize=2&type=peek")
    assert status == 200 and page["pageSize"] == 2
    assert [i["metadata"]["recordId"] for i in page["pageItems"]] == ["r0", "r1"]
    status, page = get(f"{base}?pageNum=1&pageSize=2&type=poll")
    assert status == 200 and [i["metadata"]["recordId"] for i in page["pageItems"]] == ["r0", "r1"]
    status, page = get(f"{base}?pageNum=1&pageSize=10&type=poll")
    assert [i["metadata"]["recordId"] for i in page["pageItems"]] == ["r2"]
    assert get(f"{base}?pageNum=1&pageSize=10&type=peek") == (204, None)


@pytest.mark.parametrize(
    "query",
    [
        "pageSize=2",
        "pageNum=1",
        "pageNum=0&pageSize=2",
        "pageNum=1&pageSize=x",
        "pageNum=1&pageSize=2&type=eat",
    ],
)
def test_export_endpoint_rejects_bad_parameters(server, connector_factory, query):
    sink = connector_factory(server.url, result_store=ResultStoreConfig(serve_port=0)).start()
    status, body = get(f"{sink.export_url}?{query}")
    assert status == 400
    assert body is not None and body["error"]


def test_export_endpoint_other_path_and_method(server, connector_factory):
    sink = connector_factory(server.url, result_store=ResultStoreConfig(serve_port=0, export_path="/results"))
    sink.start()
    url = sink.export_url
    assert url.endswith("/results")
    assert get(url.replace("/results", "/export") + "?pageNum=1&pageSize=1")[0] == 404
    request = urllib.request.Request(url, data=b"{}", method="POST")  # noqa: S310
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)  # noqa: S310
    info.value.close()
    assert info.value.code == 405


def test_server_stops_with_the_connector(server, connector_factory):
    port = free_port()
    sink = connector_factory(server.url, result_store=ResultStoreConfig(serve_port=port)).start()
    url = sink.export_url
    assert url == f"http://127.0.0.1:{port}/export"
    assert get(url + "?pageNum=1&pageSize=1")[0] == 204
    sink.put(ConnectRecord("x")).result(timeout=5)
    sink.close()
    assert sink.export_url is None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "?pageNum=1&pageSize=1", timeout=2)  # noqa: S310
    assert sink.export(1, 5)["pageSize"] == 1  # the store itself outlives the connector


def test_busy_port_is_a_config_error(server, connector_factory):
    first = connector_factory(server.url, result_store=ResultStoreConfig(serve_port=0)).start()
    port = int(first.export_url.rsplit(":", 1)[1].split("/")[0])
    second = connector_factory(server.url, result_store=ResultStoreConfig(serve_port=port))
    with pytest.raises(ConfigError, match=r"result_store\.serve_port"):
        second.start()


def test_export_without_store_is_refused(server, connector_factory):
    sink = connector_factory(server.url)
    with pytest.raises(RuntimeError, match="result_store"):
        sink.export()
    assert sink.export_url is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_size": 0}, "result_store.max_size"),
        ({"serve_port": 70000}, "result_store.serve_port"),
        ({"serve_port": "80"}, "result_store.serve_port"),
        ({"serve_host": ""}, "result_store.serve_host"),
        ({"export_path": "export"}, "result_store.export_path"),
    ],
)
def test_result_store_config_is_validated(kwargs, field):
    with pytest.raises(ConfigError) as info:
        ResultStoreConfig(**kwargs)
    assert info.value.field == field


def test_result_store_field_must_be_a_config():
    with pytest.raises(ConfigError) as info:
        HttpSinkConfig("http://localhost/", result_store={"max_size": 3})  # type: ignore[arg-type]
    assert info.value.field == "result_store"
