"""replay(): streaming, a per-line report, and lines that cannot be read (issue 16, items 1, 2 and 10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eventmesh_http_sink import (
    HttpSinkConfig,
    HttpSinkConnector,
    ReplayReport,
    RetryConfig,
    replay,
)
from eventmesh_http_sink.testing import Reply

ROOT = Path(__file__).resolve().parent.parent


def entry(record_id: str, data: object = "x") -> bytes:
    return json.dumps({"record_id": record_id, "data": data, "data_encoding": "json"}).encode() + b"\n"


def test_a_duplicated_record_id_is_counted_per_line(server, tmp_path):
    # Two lines with one record_id are two records: the copy that failed counts as failed.
    path = tmp_path / "dl.jsonl"
    path.write_bytes(entry("dup") + entry("other") + entry("dup"))
    server.plan("dup", Reply(200), Reply(400))
    with HttpSinkConnector(HttpSinkConfig(server.url, max_workers=1)) as sink:  # lines in order
        report = replay(path, sink)
    assert report == ReplayReport(
        resent=3, succeeded=2, failed=1, failed_ids=("dup",), failed_lines=(3,), stopped_at_line=None
    )
    assert report.resent == report.succeeded + report.failed
    assert server.keys() == ["dup", "other", "dup"]


def test_an_invalid_utf8_byte_skips_its_line_only(server, tmp_path):
    path = tmp_path / "dl.jsonl"
    good = [entry(f"g{i}", {"i": i, "text": "é"}) for i in range(10)]
    bad = b'{"record_id": "bad", "data": "caf\xe9 latin-1"}\n'
    path.write_bytes(b"".join(good[:5]) + bad + b"".join(good[5:]))
    with HttpSinkConnector(HttpSinkConfig(server.url)) as sink:
        report = replay(path, sink)
    assert (report.resent, report.succeeded, report.failed) == (10, 10, 0)
    assert len(report.skipped) == 1 and report.skipped[0][0] == 6
    assert "UTF-8" in report.skipped[0][1]
    assert server.delivered_keys() == {f"g{i}" for i in range(10)}


def test_refused_records_count_as_failed_lines(server, tmp_path):
    path = tmp_path / "dl.jsonl"
    path.write_bytes(entry("small") + entry("big", "y" * 2000))
    with HttpSinkConnector(HttpSinkConfig(server.url, max_body_bytes=1000)) as sink:
        report = replay(path, sink)  # "big" is refused by put(): its line failed, the run goes on
    assert (report.resent, report.succeeded, report.failed) == (2, 1, 1)
    assert report.failed_ids == ("big",) and report.failed_lines == (2,)


def test_a_full_shared_connector_is_waited_for_not_counted_as_failure(server, tmp_path):
    path = tmp_path / "dl.jsonl"
    path.write_bytes(b"".join(entry(f"r{i}") for i in range(20)))
    server.responder = lambda request: Reply(200, delay=0.01)
    config = HttpSinkConfig(server.url, max_pending=2, when_full="raise", max_workers=2)
    with HttpSinkConnector(config) as sink:
        report = replay(path, sink)
    assert (report.resent, report.succeeded, report.failed) == (20, 20, 0)


def test_timeout_stops_reading_and_says_where(server, tmp_path):
    path = tmp_path / "dl.jsonl"
    path.write_bytes(b"".join(entry(f"r{i}") for i in range(10)))
    server.responder = lambda request: Reply.hang(2)
    config = HttpSinkConfig(server.url, max_pending=2, retry=RetryConfig(max_retries=0))
    with HttpSinkConnector(config) as sink:
        report = replay(path, sink, timeout=0.3)
        sink.close(0)
    # Two records were in flight (the window is max_pending); line 3 was never sent.
    assert (report.resent, report.succeeded, report.failed) == (2, 0, 2)
    assert report.failed_lines == (1, 2) and report.stopped_at_line == 3
    assert set(server.keys()) <= {"r0", "r1"}


def test_a_closed_connector_stops_the_run_and_says_where(server, tmp_path):
    path = tmp_path / "dl.jsonl"
    path.write_bytes(b"".join(entry(f"r{i}") for i in range(5)))
    sink = HttpSinkConnector(HttpSinkConfig(server.url))
    sink.close()
    report = replay(path, sink)
    assert (report.resent, report.failed, report.stopped_at_line) == (0, 0, 1)


def test_a_line_too_long_for_any_record_is_skipped_without_being_held(server, tmp_path):
    path = tmp_path / "dl.jsonl"
    path.write_bytes(entry("a") + b"z" * (3 << 20) + b"\n" + entry("b"))
    # max_body_bytes=100: no line over 8 * 100 + 1 MiB can hold a record this connector takes.
    with HttpSinkConnector(HttpSinkConfig(server.url, max_body_bytes=100)) as sink:
        report = replay(path, sink)
    assert (report.resent, report.succeeded) == (2, 2)
    assert [n for n, _ in report.skipped] == [2] and "longer than" in report.skipped[0][1]


MEMORY_RUN = textwrap.dedent(
    """
    import json, sys
    from eventmesh_http_sink import BatchConfig, HttpSinkConfig, HttpSinkConnector, replay

    def peak_kib():
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

    path, url = sys.argv[1], sys.argv[2]
    # Batches keep the run short; the records still go through put() and the window one by one.
    config = HttpSinkConfig(url, max_pending=2000, batch=BatchConfig(max_records=500, linger=0.01))
    with HttpSinkConnector(config) as sink:
        before = peak_kib()
        report = replay(path, sink)
        after = peak_kib()
    print(json.dumps({"before_kib": before, "after_kib": after, "resent": report.resent,
                      "succeeded": report.succeeded, "failed": report.failed}))
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_replay_of_100k_lines_is_bounded_by_max_pending_not_the_file(server, tmp_path):
    lines = 100_000
    path = tmp_path / "big.jsonl"
    payload = {"order": 0, "note": "n" * 200, "items": list(range(20))}
    with open(path, "wb") as file:
        for i in range(lines):
            payload["order"] = i
            file.write(entry(f"rec-{i:06d}", payload))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_RUN, str(path), server.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["resent"] == out["succeeded"] == lines and out["failed"] == 0
    growth_mib = (out["after_kib"] - out["before_kib"]) / 1024
    print(
        f"\nreplay of {lines} lines ({path.stat().st_size >> 20} MiB): peak RSS {out['after_kib'] >> 10} MiB,"
        f" growth {growth_mib:.1f} MiB"
    )
    # The old replay (the whole file in memory) grew by ~390 MiB here; 2,000 records in flight
    # are ~14 MiB. The bound leaves room for allocator noise, not for the file.
    assert growth_mib < 60
