"""Failure logging scales with outages: the first failure of each kind, then a summary per interval."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import pytest

from eventmesh_http_sink import (
    ConnectRecord,
    EndpointUnavailableError,
    HttpSinkConfig,
    HttpSinkConnector,
    HttpStatusError,
    ResponseError,
    RetryConfig,
)
from eventmesh_http_sink.outcomes.failure_log import FailureLog
from eventmesh_http_sink.testing import free_port

from .conftest import Recorder

SUMMARY = re.compile(r"^([\d,]+) more records? failed in the last [\d.]+ s: (.+)$")


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def captured() -> ListHandler:
    logger = logging.getLogger("test-failure-log")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = ListHandler()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def summed(lines: list[str]) -> dict[str, int]:
    """The per-kind counts of the summary lines; checks each line's total against its kinds."""
    out: dict[str, int] = {}
    for line in lines:
        m = SUMMARY.match(line)
        assert m, line
        parts = dict(p.rsplit(" ", 1) for p in m.group(2).split(", "))
        counts = {k: int(v.replace(",", "")) for k, v in parts.items()}
        assert sum(counts.values()) == int(m.group(1).replace(",", ""))
        for kind, n in counts.items():
            out[kind] = out.get(kind, 0) + n
    return out


def test_first_of_each_kind_per_url_warns_then_one_summary_per_interval(captured: ListHandler) -> None:
    log = FailureLog(logging.getLogger("test-failure-log"), interval=0.3)
    a, b = "http://a.example/", "http://b.example/"
    log.failed("r0", 4, HttpStatusError(503, url=a, reason="Service Unavailable"))
    log.failed("r1", 1, ResponseError("reset", url=a))
    log.failed("r2", 4, HttpStatusError(503, url=b, reason="Service Unavailable"))  # another URL: first too
    for i in range(1200):
        log.failed(f"s{i}", 4, HttpStatusError(503, url=a if i % 2 else b, reason="Service Unavailable"))
    for i in range(34):
        log.failed(f"t{i}", 1, ResponseError("reset", url=a))
    warnings = captured.lines(logging.WARNING)
    assert len(warnings) == 3
    assert warnings[0].startswith("record r0 failed after 4 attempt(s): HTTP 503")
    assert "the first http_503 failure from http://a.example/" in warnings[0]
    assert warnings[1].startswith("record r1 failed after 1 attempt(s): reset")
    assert warnings[2].startswith("record r2 failed")
    # Per-record lines at DEBUG, one for every record not told at WARNING.
    assert len(captured.lines(logging.DEBUG)) == 1234
    assert "record t33 failed after 1 attempt(s): reset" in captured.lines(logging.DEBUG)

    deadline = time.monotonic() + 5
    while len(captured.lines(logging.WARNING)) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    warnings = captured.lines(logging.WARNING)
    assert len(warnings) == 4  # the interval's summary, from the timer
    assert re.fullmatch(
        r"1,234 more records failed in the last 0\.\d s: http_503 1,200, ResponseError 34", warnings[3]
    ), warnings[3]
    time.sleep(0.35)  # a quiet interval: the outage is over, the next one is told from its start
    log.failed("u1", 1, ResponseError("reset", url=a))
    log.failed("u2", 1, ResponseError("reset", url=a))  # counted, summarised at close
    log.close()
    warnings = captured.lines(logging.WARNING)
    assert len(warnings) == 6
    assert warnings[4].startswith("record u1 failed")
    assert re.fullmatch(r"1 more record failed in the last 0\.\d s: ResponseError 1", warnings[5])
    log.failed("late", 1, ResponseError("reset", url=a))  # after close: no timer, told at once
    assert captured.lines(logging.WARNING)[-1].startswith("record late failed")


def test_a_quiet_interval_ends_an_outage(captured: ListHandler) -> None:
    log = FailureLog(logging.getLogger("test-failure-log"), interval=0.2)
    log.failed("r0", 1, EndpointUnavailableError("refused", url="http://a/"))
    time.sleep(0.3)
    log.failed("r1", 1, EndpointUnavailableError("refused", url="http://a/"))
    log.close()
    warnings = captured.lines(logging.WARNING)
    assert [w.split(" failed")[0] for w in warnings] == ["record r0", "record r1"]


def test_ten_thousand_failures_are_a_handful_of_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = 10_000
    dead = tmp_path / "dead.jsonl"
    url = f"http://127.0.0.1:{free_port()}/"  # nothing listens: every attempt is refused
    config = HttpSinkConfig(url, retry=RetryConfig(max_retries=0), dead_letter=str(dead), max_pending=2000)
    recorder = Recorder()
    caplog.set_level(logging.DEBUG, logger="eventmesh_http_sink")
    with HttpSinkConnector(config) as sink:
        for i in range(n):
            sink.put(ConnectRecord({"i": i}, record_id=f"r{i}", callback=recorder))
    recorder.assert_exactly_once([f"r{i}" for i in range(n)])
    assert len(recorder.failures) == n  # the callbacks see every failure
    assert len(dead.read_text().splitlines()) == n  # and so does the dead letter
    assert {json.loads(line)["record_id"] for line in dead.read_text().splitlines()} == set(recorder.calls)

    ours = [r for r in caplog.records if r.name == "eventmesh_http_sink" and "failed" in r.getMessage()]
    warnings = [r.getMessage() for r in ours if r.levelno == logging.WARNING]
    assert 2 <= len(warnings) <= 5, warnings  # the first failure, a summary per 10 s, the last at close
    assert warnings[0].startswith("record r") and "the first EndpointUnavailableError failure" in warnings[0]
    assert summed(warnings[1:]) == {"EndpointUnavailableError": n - 1}
    assert len([r for r in ours if r.levelno == logging.DEBUG]) == n - 1
