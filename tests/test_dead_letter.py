"""Dead letters: failed records written as JSON lines, read back, and replayed."""

from __future__ import annotations

import base64
import json
import threading

import pytest

from eventmesh_http_sink import (
    ConfigError,
    ConnectRecord,
    HttpSinkConfig,
    HttpSinkConnector,
    ReplayReport,
    RetryConfig,
    replay,
)
from eventmesh_http_sink.testing import Reply

FAST = RetryConfig(max_retries=2, initial_backoff=0.01, max_backoff=0.02)


def read_lines(path) -> list[dict]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def test_failed_records_are_written_read_back_and_replayed(server, connector_factory, recorder, tmp_path):
    path = tmp_path / "failed.jsonl"
    records = [
        ConnectRecord(
            {"n": 1, "s": "é"}, extensions={"topic": "orders"}, timestamp=1700000000000, callback=recorder
        ),
        ConnectRecord("plain text", callback=recorder),
        ConnectRecord(b"\x00\xffbinary", callback=recorder),
        ConnectRecord("delivered", callback=recorder),
    ]
    for record in records[:3]:
        server.plan(record.record_id, *[Reply(503)] * 3)
    sink = connector_factory(
        server.url, retry=FAST, dead_letter=str(path), headers={"Authorization": "Bearer s3cr3t"}
    )
    for record in records:
        sink.put(record)
    assert sink.flush(10)
    recorder.assert_exactly_once([r.record_id for r in records])
    assert len(recorder.failures) == 3
    stats = sink.stats()
    assert stats.dead_lettered == 3 and stats.dead_letter_errors == 0
    # Lines are flushed as written: readable before close.
    lines = {entry["record_id"]: entry for entry in read_lines(path)}
    assert set(lines) == {r.record_id for r in records[:3]}
    first = lines[records[0].record_id]
    assert first["data"] == {"n": 1, "s": "é"} and first["data_encoding"] == "json"
    assert first["extensions"] == {"topic": "orders"} and first["timestamp"] == 1700000000000
    assert first["error_type"] == "HttpStatusError" and "503" in first["error"]
    assert first["status"] == 503 and first["attempts"] == 3 and first["url"] == server.url
    assert first["failed_at"].endswith("+00:00")
    assert lines[records[1].record_id]["data"] == "plain text"
    assert lines[records[1].record_id]["data_encoding"] == "text"
    binary = lines[records[2].record_id]
    assert binary["data_encoding"] == "base64" and base64.b64decode(binary["data"]) == b"\x00\xffbinary"
    sink.close()
    assert "s3cr3t" not in path.read_text(encoding="utf-8")

    # The endpoint recovers: replay sends the same records with the same keys.
    before = len(server.requests)
    with HttpSinkConnector(HttpSinkConfig(server.url)) as again:
        report = replay(path, again)
    assert report == ReplayReport(resent=3, succeeded=3, failed=0, skipped=())
    replayed = server.requests[before:]
    assert sorted(r.key for r in replayed) == sorted(r.record_id for r in records[:3])
    by_key = {r.key: r for r in replayed}
    assert json.loads(by_key[records[0].record_id].body) == {"n": 1, "s": "é"}
    assert json.loads(by_key[records[0].record_id].headers["extension"]) == {"topic": "orders"}
    assert by_key[records[1].record_id].body == b"plain text"
    assert by_key[records[2].record_id].body == b"\x00\xffbinary"
    assert by_key[records[2].record_id].headers["content-type"] == "application/octet-stream"


def test_replay_skips_bad_lines_and_counts_failures(server, tmp_path):
    path = tmp_path / "dl.jsonl"
    good = {"record_id": "ok-1", "data": {"a": 1}, "data_encoding": "json"}
    still_failing = {"record_id": "bad-1", "data": "t", "data_encoding": "text"}
    path.write_text(
        "\n".join(
            [
                json.dumps(good),
                "{not json",
                json.dumps({"data": 1}),  # no record_id
                json.dumps({"record_id": "x", "data": "%%%", "data_encoding": "base64"}),
                "",
                json.dumps(still_failing),
                json.dumps([1, 2]),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    server.plan("bad-1", Reply(400))
    with HttpSinkConnector(HttpSinkConfig(server.url)) as sink:
        report = replay(path, sink)
    assert (report.resent, report.succeeded, report.failed) == (2, 1, 1)
    assert report.failed_ids == ("bad-1",)
    assert [number for number, _ in report.skipped] == [2, 3, 4, 7]
    assert "record_id" in report.skipped[1][1]
    assert server.delivered_keys() == {"ok-1"}


def test_closed_records_are_dead_lettered_only_when_asked(server, connector_factory, tmp_path):
    for on_close, expected in ((False, 0), (True, 1)):
        path = tmp_path / f"closed-{on_close}.jsonl"
        server.script(Reply.hang(5))
        sink = connector_factory(server.url, dead_letter=str(path), dead_letter_on_close=on_close)
        future = sink.put(ConnectRecord("x"))
        sink.close(timeout=0.2)
        assert type(future.exception(timeout=5)).__name__ == "SinkClosedError"
        lines = read_lines(path) if path.exists() else []
        assert len(lines) == expected
        if expected:
            assert lines[0]["error_type"] == "SinkClosedError"


def test_callable_target_and_write_failures_never_lose_the_callback(server, connector_factory, recorder):
    seen: list[dict] = []
    calls = 0
    lock = threading.Lock()

    def sink_fn(entry: dict) -> None:
        nonlocal calls
        with lock:
            calls += 1
            if calls % 2 == 0:
                raise OSError("disk full")
            seen.append(entry)

    server.responder = lambda request: Reply(400)
    sink = connector_factory(server.url, dead_letter=sink_fn)
    records = [ConnectRecord(i, callback=recorder) for i in range(6)]
    for record in records:
        sink.put(record)
    assert sink.flush(10)
    recorder.assert_exactly_once([r.record_id for r in records])
    stats = sink.stats()
    assert stats.failed == 6
    assert stats.dead_lettered == 3 and stats.dead_letter_errors == 3
    assert len(seen) == 3 and all(e["status"] == 400 for e in seen)


def test_unwritable_file_is_counted_not_raised(server, connector_factory, recorder, tmp_path):
    path = tmp_path / "later-a-dir"
    sink = connector_factory(server.url, dead_letter=str(path))
    path.mkdir()  # the file cannot be opened any more
    server.script(Reply(400))
    future = sink.put(ConnectRecord("x", callback=recorder))
    assert future.exception(timeout=5) is not None
    assert sink.flush(5)
    assert len(recorder.failures) == 1
    assert sink.stats().dead_letter_errors == 1


@pytest.mark.parametrize("value", [42, "", "/no/such/dir/x.jsonl"])
def test_dead_letter_config_is_validated(value, tmp_path):
    with pytest.raises(ConfigError) as info:
        HttpSinkConfig("http://localhost/", dead_letter=value)
    assert info.value.field == "dead_letter"
    with pytest.raises(ConfigError) as info:
        HttpSinkConfig("http://localhost/", dead_letter=str(tmp_path))
    assert info.value.field == "dead_letter"
    with pytest.raises(ConfigError) as info:
        HttpSinkConfig("http://localhost/", dead_letter_on_close=1)
    assert info.value.field == "dead_letter_on_close"


def _open_fds_for(path) -> int:
    import os

    target = os.path.realpath(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == target
        except OSError:
            pass
    return count


def test_writer_fsyncs_on_close_and_late_writes_leave_nothing_open(tmp_path, monkeypatch):
    import os

    from eventmesh_http_sink.outcomes.dead_letter import DeadLetterWriter

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    path = tmp_path / "w.jsonl"
    writer = DeadLetterWriter(str(path))
    writer.write(lambda: {"record_id": "a"}, "a")
    assert read_lines(path) == [{"record_id": "a"}]  # in the file at once: no user-space buffer
    assert _open_fds_for(path) == 1
    writer.close()
    assert len(synced) == 1 and _open_fds_for(path) == 0
    writer.write(lambda: {"record_id": "late"}, "late")  # a record finishing after close
    assert _open_fds_for(path) == 0 and len(synced) == 2
    assert [e["record_id"] for e in read_lines(path)] == ["a", "late"]
    assert writer.written == 2 and writer.errors == 0
