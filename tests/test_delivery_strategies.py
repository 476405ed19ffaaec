"""Several URLs: round robin, broadcast and failover against real loopback servers."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator

import pytest

from eventmesh_http_sink import (
    BroadcastError,
    ConfigError,
    ConnectRecord,
    HttpSinkConfig,
    HttpSinkConnector,
    RetryConfig,
    SinkClosedError,
)
from eventmesh_http_sink.testing import FaultServer, Reply

from .conftest import Recorder

FAST_RETRY = RetryConfig(max_retries=2, initial_backoff=0.001, max_backoff=0.01)


@pytest.fixture
def servers() -> Iterator[list[FaultServer]]:
    started = [FaultServer().start() for _ in range(3)]
    yield started
    for server in started:
        server.stop()


def test_round_robin_spreads_evenly_under_many_threads(servers: list[FaultServer]) -> None:
    cfg = HttpSinkConfig([s.url for s in servers], max_workers=16, retry=FAST_RETRY)
    outcomes = Recorder()
    with HttpSinkConnector(cfg) as sink:

        def produce(n: int) -> None:
            for i in range(375):
                sink.put(ConnectRecord({"i": i}, callback=outcomes, record_id=f"t{n}-{i}"))

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sink.flush(30)
    counts = [len(s.requests) for s in servers]
    assert sum(counts) == 3000
    assert all(990 <= c <= 1010 for c in counts), counts
    assert len(outcomes.successes) == 3000 and set(outcomes.calls.values()) == {1}


def test_query_strings_are_kept(servers: list[FaultServer]) -> None:
    url = servers[0].url + "hook?tenant=a%20b&x=1"
    with HttpSinkConnector(HttpSinkConfig(url)) as sink:
        sink.put(ConnectRecord({"a": 1})).result(5)
    assert servers[0].requests[0].path == "/hook?tenant=a%20b&x=1"


def test_broadcast_delivers_every_record_to_every_url(servers: list[FaultServer]) -> None:
    urls = [s.url for s in servers]
    outcomes = Recorder()
    with HttpSinkConnector(HttpSinkConfig(urls, delivery_strategy="broadcast")) as sink:
        futures = [sink.put(ConnectRecord({"i": i}, callback=outcomes, record_id=f"b{i}")) for i in range(60)]
        results = [f.result(10) for f in futures]
    expected = {f"b{i}" for i in range(60)}
    for server in servers:
        assert sorted(filter(None, server.keys())) == sorted(expected)  # once each, on every URL
    assert all(r.url is None and dict(r.per_url or {}) == dict.fromkeys(urls, 200) for r in results)
    assert outcomes.calls == collections.Counter(dict.fromkeys(expected, 1))
    assert sink.stats().succeeded == 60 and sink.stats().pending == 0


def test_broadcast_failure_lists_each_failed_url(servers: list[FaultServer]) -> None:
    urls = [s.url for s in servers]
    servers[1].responder = lambda request: Reply(500, body=b"down")
    servers[2].plan("r1", Reply(503), Reply(200))  # recovers on its own retry
    outcomes = Recorder()
    cfg = HttpSinkConfig(urls, delivery_strategy="broadcast", retry=FAST_RETRY)
    with HttpSinkConnector(cfg) as sink:
        future = sink.put(ConnectRecord({"x": 1}, callback=outcomes, record_id="r1"))
        with pytest.raises(BroadcastError) as info:
            future.result(10)
    err = info.value
    assert list(err.errors) == [urls[1]]
    assert err.errors[urls[1]].status == 500
    assert err.per_url == {urls[0]: 200, urls[1]: 500, urls[2]: 200}
    assert urls[1] in str(err)
    assert servers[1].keys().count("r1") == 3  # its own retries: 1 + max_retries
    assert servers[2].keys().count("r1") == 2
    assert servers[0].keys().count("r1") == 1  # the healthy URL is not resent
    assert outcomes.calls == {"r1": 1} and outcomes.failures["r1"].url is None
    assert sink.stats().failed == 1


def test_failover_moves_on_and_cools_a_failing_url_down(servers: list[FaultServer]) -> None:
    primary, backup, _ = servers
    primary.responder = lambda request: Reply(503)
    cfg = HttpSinkConfig(
        [primary.url, backup.url],
        delivery_strategy="failover",
        failover_threshold=3,
        failover_cooldown=0.3,
        retry=FAST_RETRY,
    )
    with HttpSinkConnector(cfg) as sink:
        for i in range(10):  # one at a time, so the failure count is deterministic
            result = sink.put(ConnectRecord({"i": i}, record_id=f"f{i}")).result(5)
            assert result.url == backup.url
        assert len(primary.requests) == 3  # then skipped while cooling down
        assert len(backup.requests) == 10
        primary.responder = None  # healthy again
        time.sleep(0.35)
        assert sink.put(ConnectRecord({"i": 99})).result(5).url == primary.url


def test_failover_counts_only_consecutive_failures(servers: list[FaultServer]) -> None:
    # A 2xx resets the URL's failure count: 2 failures, a success, 2 failures never reach 3.
    primary, backup, _ = servers
    answers = iter([503, 503, 200, 503, 503, 200, 200])
    primary.responder = lambda request: Reply(next(answers))
    cfg = HttpSinkConfig(
        [primary.url, backup.url],
        delivery_strategy="failover",
        failover_threshold=3,
        failover_cooldown=60,
        retry=RetryConfig(max_retries=0),
    )
    with HttpSinkConnector(cfg) as sink:
        for i in range(7):  # one at a time: the order of answers is the order of records
            future = sink.put(ConnectRecord({"i": i}))
            if i in (2, 5, 6):
                assert future.result(5).url == primary.url
            else:
                with pytest.raises(Exception, match="HTTP 503"):
                    future.result(5)
    assert len(primary.requests) == 7 and not backup.requests  # never cooled down


def test_failover_does_not_blame_the_url_for_a_bad_record(servers: list[FaultServer]) -> None:
    primary, backup, _ = servers
    primary.responder = lambda request: Reply(400)  # not retryable: the record's fault
    cfg = HttpSinkConfig([primary.url, backup.url], delivery_strategy="failover", failover_threshold=1)
    with HttpSinkConnector(cfg) as sink:
        for i in range(3):
            with pytest.raises(Exception, match="HTTP 400"):
                sink.put(ConnectRecord({"i": i})).result(5)
    assert len(primary.requests) == 3 and not backup.requests


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"delivery_strategy": "random"}, "delivery_strategy"),
        ({"failover_threshold": 0}, "failover_threshold"),
        ({"failover_cooldown": -1}, "failover_cooldown"),
    ],
)
def test_strategy_config_is_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        HttpSinkConfig(["http://a/", "http://b/"], **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_failover_needs_two_urls() -> None:
    with pytest.raises(ConfigError, match="delivery_strategy"):
        HttpSinkConfig("http://a/", delivery_strategy="failover")


def test_close_cancels_a_stuck_broadcast_once(servers: list[FaultServer]) -> None:
    servers[1].responder = lambda request: Reply.hang(3)
    outcomes = Recorder()
    cfg = HttpSinkConfig([s.url for s in servers], delivery_strategy="broadcast", read_timeout=10)
    sink = HttpSinkConnector(cfg)
    futures = [sink.put(ConnectRecord({"i": i}, callback=outcomes, record_id=f"c{i}")) for i in range(5)]
    sink.close(0.3)
    for future in futures:
        assert isinstance(future.exception(0), SinkClosedError)
    assert outcomes.calls == collections.Counter({f"c{i}": 1 for i in range(5)})
    stats = sink.stats()
    assert stats.failed == 5 and stats.pending == 0 and stats.submitted == 5
