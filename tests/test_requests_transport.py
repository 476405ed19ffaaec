"""The optional requests.Session transport (mocked with `responses`, and once for real)."""

from __future__ import annotations

import pytest
import requests
import responses

from eventmesh_http_sink import (
    ConnectRecord,
    ConnectTimeoutError,
    EndpointUnavailableError,
    HttpStatusError,
    ReadTimeoutError,
    ResponseError,
    RetryConfig,
)

URL = "https://hooks.example.test/in?src=emhs"
NO_RETRY = RetryConfig(max_retries=0)


@responses.activate
def test_session_transport_sends_and_reports(connector_factory, recorder):
    responses.add(responses.POST, URL, body=b"thanks", status=202)
    session = requests.Session()
    session.headers["X-From-Session"] = "yes"
    sink = connector_factory(URL, transport=session)
    record = ConnectRecord({"a": 1}, {"topic": "t"}, callback=recorder)
    result = sink.put(record).result(timeout=5)
    assert sink.flush(5)
    assert result.status == 202
    assert result.response_body == b"thanks"
    (call,) = responses.calls
    assert call.request.url == URL
    assert call.request.headers["Idempotency-Key"] == record.record_id
    assert call.request.headers["X-From-Session"] == "yes"
    assert call.request.body == b'{"a":1}'
    recorder.assert_exactly_once([record.record_id])


@responses.activate
def test_session_transport_retries_then_succeeds(connector_factory):
    responses.add(responses.POST, URL, status=503)
    responses.add(responses.POST, URL, status=200)
    sink = connector_factory(URL, transport=requests.Session(), retry=RetryConfig(initial_backoff=0.01))
    assert sink.put(ConnectRecord(1)).result(timeout=5).attempts == 2


@responses.activate
def test_session_transport_does_not_follow_redirects(connector_factory):
    responses.add(responses.POST, URL, status=307, headers={"Location": "https://other.test/"})
    responses.add(responses.POST, "https://other.test/", status=200)
    sink = connector_factory(URL, transport=requests.Session(), retry=NO_RETRY)
    error = sink.put(ConnectRecord(1)).exception(timeout=5)
    assert isinstance(error, HttpStatusError)
    assert error.status == 307
    assert len(responses.calls) == 1


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (requests.ConnectTimeout("slow connect"), ConnectTimeoutError),
        (requests.ReadTimeout("slow read"), ReadTimeoutError),
        (requests.ConnectionError("refused"), EndpointUnavailableError),
        (requests.exceptions.ChunkedEncodingError("broken"), ResponseError),
    ],
)
@responses.activate
def test_session_errors_are_classified(connector_factory, recorder, raised, expected):
    responses.add(responses.POST, URL, body=raised)
    sink = connector_factory(URL, transport=requests.Session(), retry=NO_RETRY)
    record = ConnectRecord(1, callback=recorder)
    error = sink.put(record).exception(timeout=5)
    assert isinstance(error, expected)
    assert error.__cause__ is raised
    sink.flush(5)
    recorder.assert_exactly_once([record.record_id])


def test_session_transport_against_a_real_server(server, connector_factory):
    with requests.Session() as session:
        sink = connector_factory(server.url + "real?q=1", transport=session, max_workers=2)
        futures = sink.put_all([ConnectRecord(i) for i in range(20)])
        assert all(f.result(timeout=5).status == 200 for f in futures)
        sink.close()
    assert len(server.requests) == 20
    assert server.requests[0].path == "/real?q=1"
