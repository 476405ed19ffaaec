"""Encodings: json (core), raw, CloudEvents binary and structured, parsed by the SDK's receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.formats.json import JSONFormat

from eventmesh_http_sink import (
    ConfigError,
    ConnectRecord,
    HttpSinkConfig,
    HttpSinkConnector,
    InvalidRecordError,
)
from eventmesh_http_sink.testing import FaultServer, RequestLog


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as s:
        yield s


def parse(request: RequestLog):  # type: ignore[no-untyped-def]
    """What a receiver using the cloudevents SDK sees."""
    return from_http(HTTPMessage(dict(request.headers), request.body), JSONFormat())


def send(server: FaultServer, record: ConnectRecord, **kwargs: object) -> RequestLog:
    cfg = HttpSinkConfig(server.url, **kwargs)  # type: ignore[arg-type]
    with HttpSinkConnector(cfg) as sink:
        sink.put(record).result(5)
    return server.requests[-1]


CE = {"ce_source": "/orders", "ce_type": "com.example.order"}


@pytest.mark.parametrize("mode", ["cloudevents-binary", "cloudevents-structured"])
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"order": 7, "items": [1, 2]}, {"order": 7, "items": [1, 2]}),
        ("héllo", "héllo"),
        (b"\x00\xff", b"\x00\xff"),
    ],
)
def test_cloudevents_round_trip_through_the_sdk(
    server: FaultServer, mode: str, data: object, expected: object
) -> None:
    record = ConnectRecord(
        data,
        extensions={"topic": "orders", "tenant": "ünï", "priority": 3, "subject": "o-7"},
        timestamp=1_700_000_000_123,
        record_id="ce-1",
    )
    request = send(server, record, encoding=mode, **CE)
    event = parse(request)
    assert event.get_id() == "ce-1"
    assert event.get_source() == "/orders" and event.get_type() == "com.example.order"
    assert event.get_subject() == "o-7"
    assert event.get_time() == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert event.get_extension("topic") == "orders"
    assert event.get_extension("tenant") == "ünï"  # percent-encoded in binary mode, decoded by the SDK
    assert str(event.get_extension("priority")) == "3"
    assert event.get_data() == expected
    assert "extension" not in request.headers
    if mode == "cloudevents-binary":
        assert request.headers["ce-id"] == "ce-1"
    else:
        assert request.headers["content-type"] == "application/cloudevents+json"


def test_record_extensions_override_source_and_type(server: FaultServer) -> None:
    record = ConnectRecord({"a": 1}, extensions={"source": "/other", "type": "t2"})
    event = parse(send(server, record, encoding="cloudevents-structured", **CE))
    assert (event.get_source(), event.get_type()) == ("/other", "t2")


@pytest.mark.parametrize(
    ("extensions", "match"),
    [
        ({"Bad-Name": "x"}, "not a CloudEvents attribute name"),
        ({"note": "a\r\nX-Injected: 1"}, "CR, LF or NUL"),
        ({"id": "other"}, "reserved"),
        ({"nested": {"a": 1}}, "must be str, int or bool"),
    ],
)
def test_bad_cloudevents_extensions_are_refused_by_put(
    server: FaultServer, extensions: dict[str, object], match: str
) -> None:
    cfg = HttpSinkConfig(server.url, encoding="cloudevents-binary", **CE)  # type: ignore[arg-type]
    with HttpSinkConnector(cfg) as sink:
        with pytest.raises(InvalidRecordError, match=match) as info:
            sink.put(ConnectRecord({"a": 1}, extensions=extensions, record_id="bad-1"))
        assert info.value.record_id == "bad-1"
        assert sink.stats().submitted == 0
    assert not server.requests


def test_raw_sends_the_body_as_given_without_extension_header(server: FaultServer) -> None:
    request = send(server, ConnectRecord(b"<xml/>", extensions={"topic": "t"}), encoding="raw")
    assert request.body == b"<xml/>"
    assert "extension" not in request.headers


def test_json_keeps_the_core_encoding(server: FaultServer) -> None:
    request = send(server, ConnectRecord({"a": 1}, extensions={"topic": "t"}))
    assert json.loads(request.body) == {"a": 1}
    assert json.loads(request.headers["extension"]) == {"topic": "t"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"encoding": "avro"}, "encoding"),
        ({"encoding": "cloudevents-binary", "ce_type": "t"}, "ce_source"),
        ({"encoding": "cloudevents-structured", "ce_source": "/s"}, "ce_type"),
        ({"ce_source": ""}, "ce_source"),
    ],
)
def test_encoding_config_is_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        HttpSinkConfig("http://a/", **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
