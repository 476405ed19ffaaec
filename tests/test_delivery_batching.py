"""Batching: per-URL accumulation, limits, linger, flush/close, per-record outcomes."""

from __future__ import annotations

import collections
import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest
from cloudevents.core.formats.json import JSONFormat

from eventmesh_http_sink import (
    BatchConfig,
    BatchRecordError,
    ConfigError,
    ConnectRecord,
    HttpSinkConfig,
    HttpSinkConnector,
    HttpStatusError,
    InvalidRecordError,
    QueueFullError,
    RetryConfig,
    SinkClosedError,
)
from eventmesh_http_sink.dispatch.batching import Batcher
from eventmesh_http_sink.testing import FaultServer, Reply, RequestLog

from .conftest import Recorder

FAST_RETRY = RetryConfig(max_retries=3, initial_backoff=0.001, max_backoff=0.01)
LONG = 30.0  # a linger no test waits for: only limits, flush() and close() send


def keys_in(request: RequestLog) -> list[str]:
    return [item["k"] for item in json.loads(request.body)]


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as s:
        yield s


def records(n: int, outcomes: Recorder | None = None, prefix: str = "r") -> list[ConnectRecord]:
    return [
        ConnectRecord({"k": f"{prefix}{i}"}, callback=outcomes, record_id=f"{prefix}{i}") for i in range(n)
    ]


def test_full_batches_go_at_once_and_flush_sends_the_partial_one(server: FaultServer) -> None:
    outcomes = Recorder()
    cfg = HttpSinkConfig(server.url, batch=BatchConfig(max_records=100, linger=LONG))
    with HttpSinkConnector(cfg) as sink:
        futures = sink.put_all(records(250, outcomes))
        assert sink.flush(10)  # would need LONG seconds without flush() draining the batch
        results = [f.result(0) for f in futures]
    assert sorted(len(keys_in(r)) for r in server.requests) == [50, 100, 100]
    sent = [k for r in server.requests for k in keys_in(r)]
    assert sorted(sent) == sorted(f"r{i}" for i in range(250))
    assert server.requests[0].headers["content-type"] == "application/json"
    assert all(r.status == 200 and r.url == server.url and r.attempts == 1 for r in results)
    assert set(outcomes.calls.values()) == {1} and len(outcomes.successes) == 250


def test_linger_sends_a_partial_batch_without_flush(server: FaultServer) -> None:
    cfg = HttpSinkConfig(server.url, batch=BatchConfig(max_records=100, linger=0.02))
    with HttpSinkConnector(cfg) as sink:
        futures = sink.put_all(records(5))
        assert [f.result(5).status for f in futures] == [200] * 5
    assert len(server.requests) == 1 and len(keys_in(server.requests[0])) == 5


def test_max_bytes_bounds_each_request(server: FaultServer) -> None:
    recs = [ConnectRecord({"k": f"b{i}", "pad": "x" * 300}) for i in range(20)]
    cfg = HttpSinkConfig(server.url, batch=BatchConfig(max_records=100, max_bytes=1000, linger=LONG))
    with HttpSinkConnector(cfg) as sink:
        sink.put_all(recs)
        assert sink.flush(10)
    assert all(len(r.body) <= 1000 for r in server.requests)
    assert sum(len(keys_in(r)) for r in server.requests) == 20 and len(server.requests) >= 7


def test_ndjson_format(server: FaultServer) -> None:
    cfg = HttpSinkConfig(server.url, batch=BatchConfig(format="ndjson", linger=LONG))
    with HttpSinkConnector(cfg) as sink:
        sink.put_all([*records(3), ConnectRecord("plain text")])
        assert sink.flush(10)
    (request,) = server.requests
    assert request.headers["content-type"] == "application/x-ndjson"
    lines = request.body.decode().splitlines()
    assert [json.loads(line) for line in lines] == [{"k": "r0"}, {"k": "r1"}, {"k": "r2"}, "plain text"]


def test_batch_status_applies_to_every_record_each_failing_once(server: FaultServer) -> None:
    server.responder = lambda request: Reply(400, body=b"bad batch")
    outcomes = Recorder()
    cfg = HttpSinkConfig(server.url, batch=BatchConfig(linger=LONG), retry=FAST_RETRY)
    with HttpSinkConnector(cfg) as sink:
        futures = sink.put_all(records(10, outcomes))
        assert sink.flush(10)
    errors = [f.exception(0) for f in futures]
    assert all(isinstance(e, HttpStatusError) and e.status == 400 for e in errors)
    assert len({id(e) for e in errors}) == 10  # each record raises its own error object
    assert set(outcomes.calls.values()) == {1} and len(outcomes.failures) == 10
    assert len(server.requests) == 1  # 400 is not retried


def test_a_failed_batch_is_retried_and_then_delivered(server: FaultServer) -> None:
    server.script(Reply(503))
    cfg = HttpSinkConfig(server.url, batch=BatchConfig(linger=0.01), retry=FAST_RETRY)
    with HttpSinkConnector(cfg) as sink:
        futures = sink.put_all(records(10))
        results = [f.result(10) for f in futures]
    assert all(r.attempts == 2 for r in results)
    assert collections.Counter(k for r in server.requests for k in keys_in(r)) == {
        f"r{i}": 2 for i in range(10)
    }


def test_result_parser_retries_only_the_failed_records(server: FaultServer) -> None:
    failing = {"r0", "r3", "r6", "r9"}
    seen: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def respond(request: RequestLog) -> Reply:
        with lock:
            keys = keys_in(request)
            verdicts = [{"ok": seen[k] > 0 or k not in failing, "error": "quota"} for k in keys]
            seen.update(keys)
        return Reply(200, body=json.dumps(verdicts).encode())

    def parser(status: int, body: bytes, recs: Sequence[ConnectRecord]) -> list[tuple[bool, str | None]]:
        return [(v["ok"], v["error"]) for v in json.loads(body)]

    server.responder = respond
    outcomes = Recorder()
    cfg = HttpSinkConfig(server.url, batch=BatchConfig(linger=0.01, result_parser=parser), retry=FAST_RETRY)
    with HttpSinkConnector(cfg) as sink:
        futures = sink.put_all(records(10, outcomes))
        results = {f.result(10).record_id: f.result(0) for f in futures}
    sent = collections.Counter(k for r in server.requests for k in keys_in(r))
    assert sent == {f"r{i}": 2 if f"r{i}" in failing else 1 for i in range(10)}
    assert {k for k, r in results.items() if r.attempts == 2} == failing
    assert set(outcomes.calls.values()) == {1} and len(outcomes.successes) == 10


def test_result_parser_failures_are_reported_per_record(server: FaultServer) -> None:
    def parser(status: int, body: bytes, recs: Sequence[ConnectRecord]) -> list[tuple[bool, str | None]]:
        return [(r.record_id != "r1", "rejected: schema") for r in recs]

    cfg = HttpSinkConfig(
        server.url, batch=BatchConfig(linger=LONG, result_parser=parser), retry=RetryConfig(max_retries=0)
    )
    with HttpSinkConnector(cfg) as sink:
        f0, f1, f2 = sink.put_all(records(3))
        assert sink.flush(10)
    assert f0.result(0).status == 200 and f2.result(0).status == 200
    err = f1.exception(0)
    assert isinstance(err, BatchRecordError) and "rejected: schema" in str(err)


def test_a_broken_result_parser_fails_the_batch_without_losing_records(server: FaultServer) -> None:
    cfg = HttpSinkConfig(server.url, batch=BatchConfig(linger=LONG, result_parser=lambda s, b, r: []))
    with HttpSinkConnector(cfg) as sink:
        futures = sink.put_all(records(4))
        assert sink.flush(10)
    assert all("result_parser failed" in str(f.exception(0)) for f in futures)


def test_close_sends_partial_batches_instead_of_cancelling(server: FaultServer) -> None:
    outcomes = Recorder()
    sink = HttpSinkConnector(HttpSinkConfig(server.url, batch=BatchConfig(linger=LONG)))
    futures = sink.put_all(records(7, outcomes))
    sink.close(10)
    assert [f.result(0).status for f in futures] == [200] * 7
    assert len(outcomes.successes) == 7 and len(server.requests) == 1


def test_put_stays_bounded_by_max_pending(server: FaultServer) -> None:
    cfg = HttpSinkConfig(server.url, batch=BatchConfig(linger=LONG), max_pending=5, when_full="raise")
    with HttpSinkConnector(cfg) as sink:
        sink.put_all(records(5))
        with pytest.raises(QueueFullError):
            sink.put(ConnectRecord({"k": "extra"}))  # batched records hold their slots
        assert sink.flush(10)
        later = sink.put(ConnectRecord({"k": "later"}))  # room again once the batch finished
        assert sink.flush(10)
        assert later.result(0).status == 200


def test_cloudevents_batch_format(server: FaultServer) -> None:
    cfg = HttpSinkConfig(
        server.url,
        batch=BatchConfig(linger=LONG),
        encoding="cloudevents-binary",
        ce_source="/s",
        ce_type="t",
    )
    with HttpSinkConnector(cfg) as sink:
        sink.put_all(records(3))
        assert sink.flush(10)
    (request,) = server.requests
    assert request.headers["content-type"] == "application/cloudevents-batch+json"
    events = [JSONFormat().read(None, json.dumps(doc).encode()) for doc in json.loads(request.body)]
    assert [e.get_id() for e in events] == ["r0", "r1", "r2"]
    assert [e.get_data() for e in events] == [{"k": "r0"}, {"k": "r1"}, {"k": "r2"}]


def test_broadcast_batches_per_url() -> None:
    with FaultServer() as a, FaultServer() as b:
        cfg = HttpSinkConfig([a.url, b.url], delivery_strategy="broadcast", batch=BatchConfig(linger=LONG))
        with HttpSinkConnector(cfg) as sink:
            futures = sink.put_all(records(20))
            assert sink.flush(10)
        assert all(dict(f.result(0).per_url or {}) == {a.url: 200, b.url: 200} for f in futures)
        for server in (a, b):
            assert sorted(k for r in server.requests for k in keys_in(r)) == sorted(
                f"r{i}" for i in range(20)
            )


def test_round_robin_batches_spread_over_urls() -> None:
    with FaultServer() as a, FaultServer() as b:
        cfg = HttpSinkConfig([a.url, b.url], batch=BatchConfig(max_records=10, linger=LONG))
        with HttpSinkConnector(cfg) as sink:
            sink.put_all(records(100))
            assert sink.flush(10)
        assert sum(len(keys_in(r)) for r in a.requests) == 50
        assert sum(len(keys_in(r)) for r in b.requests) == 50


def test_gzip_applies_to_the_batch_body(server: FaultServer) -> None:
    cfg = HttpSinkConfig(
        server.url, batch=BatchConfig(linger=LONG), compression="gzip", compress_min_bytes=100
    )
    with HttpSinkConnector(cfg) as sink:
        sink.put_all(records(50))
        assert sink.flush(10)
    (request,) = server.requests
    assert request.headers["content-encoding"] == "gzip"
    assert [d["k"] for d in json.loads(gzip.decompress(request.body))] == [f"r{i}" for i in range(50)]


def test_binary_data_cannot_join_a_json_batch(server: FaultServer) -> None:
    with HttpSinkConnector(HttpSinkConfig(server.url, batch=BatchConfig())) as sink:
        with pytest.raises(InvalidRecordError, match="binary data") as info:
            sink.put(ConnectRecord(b"\xff\xfe", record_id="bin-1"))
        assert info.value.record_id == "bin-1" and sink.stats().submitted == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_records": 0}, "batch.max_records"),
        ({"max_bytes": -1}, "batch.max_bytes"),
        ({"linger": 0}, "batch.linger"),
        ({"format": "xml"}, "batch.format"),
        ({"result_parser": "nope"}, "batch.result_parser"),
    ],
)
def test_batch_config_is_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        BatchConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_batch_excludes_header_fn_and_must_be_a_batch_config() -> None:
    with pytest.raises(ConfigError) as info:
        HttpSinkConfig("http://a/", batch=BatchConfig(), header_fn=lambda r: {})
    assert info.value.field == "header_fn"
    with pytest.raises(ConfigError) as info:
        HttpSinkConfig("http://a/", batch={"max_records": 10})  # type: ignore[arg-type]
    assert info.value.field == "batch"


def test_close_cancels_a_stuck_batch_once(server: FaultServer) -> None:
    server.responder = lambda request: Reply.hang(3)
    outcomes = Recorder()
    sink = HttpSinkConnector(HttpSinkConfig(server.url, batch=BatchConfig(linger=0.01), read_timeout=10))
    futures = sink.put_all(records(6, outcomes))
    sink.close(0.3)
    assert all(isinstance(f.exception(0), SinkClosedError) for f in futures)
    assert set(outcomes.calls.values()) == {1} and len(outcomes.failures) == 6
    assert sink.stats().pending == 0


# -- issue 14: the per-record cost of the batch path --------------------------------------------


def test_a_configured_content_type_decides_the_batch_element(server: FaultServer) -> None:
    # put() builds only the batch element when batching: the configured Content-Type
    # still wins over the data's own (here JSON data sent as text, so a JSON string).
    cfg = HttpSinkConfig(
        server.url, headers={"Content-Type": "text/plain"}, batch=BatchConfig(max_records=2, linger=LONG)
    )
    with HttpSinkConnector(cfg) as sink:
        futures = sink.put_all(records(2))
        assert [f.result(10).status for f in futures] == [200, 200]
    (request,) = server.requests
    assert request.headers["content-type"] == "text/plain"
    assert json.loads(request.body) == ['{"k":"r0"}', '{"k":"r1"}']


def test_the_strategy_hears_a_delivered_batch_once(
    server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A success only clears the URL's failure count: once per batch says the same as
    # once per record, for a hundredth of the calls. Failures are still reported per record.
    from eventmesh_http_sink.dispatch import strategies

    reports: list[bool] = []  # delivered?
    monkeypatch.setattr(
        strategies.Failover, "report", lambda self, unit, url, error, retryable: reports.append(error is None)
    )
    cfg = HttpSinkConfig(
        [server.url, server.url + "?second"],
        delivery_strategy="failover",
        retry=FAST_RETRY,
        batch=BatchConfig(max_records=10, linger=LONG),
    )
    with HttpSinkConnector(cfg) as sink:
        futures = sink.put_all(records(30))
        assert all(f.result(10).status == 200 for f in futures)
        server.script(Reply(503))
        failed = sink.put_all(records(10, prefix="f"))
        assert all(f.result(10).status == 200 for f in failed)  # retried once, then delivered
    assert reports.count(True) == 4  # 3 batches + the retried one
    assert reports.count(False) == 10  # the failed batch: each record


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_the_batch_timer_is_woken_only_for_a_deadline_it_would_sleep_past() -> None:
    # Thousands of batches a second each opened with a notify of the timer thread: now
    # only a timer sleeping past the new batch's deadline (or with nothing to wait for) is woken.
    sent: list[tuple[str, list[int]]] = []
    batcher: Batcher[int] = Batcher(
        BatchConfig(max_records=2, linger=0.2), lambda url, items: sent.append((url, items))
    )
    notified: list[int] = []

    class Counting(threading.Condition):
        def notify(self, n: int = 1) -> None:
            notified.append(n)
            super().notify(n)

    batcher._cv = Counting(batcher._lock)  # the timer waits on it
    try:
        batcher.add("a", 0, 1)  # starts the timer, which sleeps until a's deadline
        for i in range(20):  # ten full batches of b, each opened after a's deadline was set
            batcher.add("b", i, 1)
        assert notified == []
        assert [url for url, _ in sent] == ["b"] * 10
        _wait_for(lambda: ("a", [0]) in sent)  # the timer sent a's partial batch on time
        # Nothing is open now: the timer sleeps until notified, and a new batch must wake it.
        batcher.add("c", 1, 1)
        _wait_for(lambda: ("c", [1]) in sent)
    finally:
        assert batcher.stop() == []
