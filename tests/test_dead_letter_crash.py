"""A dead-letter file that a crash or a full disk cannot corrupt for the next run (issue 16, items 3-4).

The writers run in subprocesses: one is killed with SIGKILL while it writes large
dead letters, another writes under ``RLIMIT_FSIZE`` (a disk that fills up, with
SIGXFSZ ignored so the write fails with EFBIG like ENOSPC would). Both work
unprivileged, so they run in CI.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from eventmesh_http_sink import ConnectRecord, HttpSinkConfig, HttpSinkConnector, replay
from eventmesh_http_sink.outcomes.dead_letter import DeadLetterWriter

ROOT = Path(__file__).resolve().parent.parent
DEAD_URL = "http://127.0.0.1:1/"  # nothing listens on port 1: each record fails at once


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def split_lines(path: Path) -> tuple[list[dict], list[int]]:
    """The entries of the whole lines, and the numbers of the lines that are not JSON."""
    entries, broken = [], []
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                entries.append(json.loads(raw))
            except ValueError:
                broken.append(number)
    return entries, broken


# -- a torn last line -----------------------------------------------------------------------


def test_a_torn_last_line_is_left_alone_and_the_next_entry_starts_on_a_new_line(tmp_path, caplog):
    path = tmp_path / "dl.jsonl"
    whole = json.dumps({"record_id": "before", "data": 1}) + "\n"
    path.write_bytes(whole.encode() + b'{"record_id":"torn","data":"abc')  # what a kill -9 leaves
    writer = DeadLetterWriter(str(path))
    with caplog.at_level(logging.WARNING, logger="eventmesh_http_sink"):
        writer.write(lambda: {"record_id": "after", "data": 2}, "after")
        writer.write(lambda: {"record_id": "after-2", "data": 3}, "after-2")
    writer.close()
    assert "ends inside a line" in caplog.text and caplog.text.count("ends inside a line") == 1
    lines = path.read_bytes().split(b"\n")
    assert lines[1] == b'{"record_id":"torn","data":"abc'  # the fragment stays a line of its own
    assert json.loads(lines[2])["record_id"] == "after" and json.loads(lines[3])["record_id"] == "after-2"
    assert writer.written == 2 and writer.errors == 0


def test_replay_skips_the_torn_line_with_its_number_and_sends_the_rest(tmp_path, server):
    path = tmp_path / "dl.jsonl"
    path.write_bytes(b'{"record_id":"a","data":1}\n{"record_id":"torn","da')
    writer = DeadLetterWriter(str(path))
    writer.write(lambda: {"record_id": "b", "data": 2}, "b")
    writer.close()
    with HttpSinkConnector(HttpSinkConfig(server.url)) as sink:
        report = replay(path, sink)
    assert (report.resent, report.succeeded, report.failed) == (2, 2, 0)
    assert [number for number, _ in report.skipped] == [2]
    assert server.delivered_keys() == {"a", "b"}


# -- kill -9 while writing large dead letters ------------------------------------------------

KILLED_WRITER = textwrap.dedent(
    """
    import sys
    from eventmesh_http_sink import ConnectRecord, HttpSinkConfig, HttpSinkConnector, RetryConfig

    path, run, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = HttpSinkConfig(
        "http://127.0.0.1:1/", dead_letter=path, retry=RetryConfig(max_retries=0), max_workers=4,
        max_pending=8,
    )
    sink = HttpSinkConnector(config)
    # The first entry of every run is small: it must be whole whatever the last run left.
    sink.put(ConnectRecord("first", record_id=f"{run}-first")).exception()
    print("ready", flush=True)
    n = 0
    while True:
        sink.put(ConnectRecord("x" * size, record_id=f"{run}-{n}"))
        n += 1
    """
)


def test_kill_9_mid_write_never_glues_the_next_run_onto_a_fragment(tmp_path, server):
    path = tmp_path / "dl.jsonl"
    runs, size = 6, 4 * 1024 * 1024  # 4 MB records: a write takes long enough to be cut
    rng = random.Random(16)
    for run in range(runs):
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLED_WRITER, str(path), f"run{run}", str(size)],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # one WARNING per failed record
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        start = path.stat().st_size
        deadline = time.monotonic() + 20
        while path.stat().st_size < start + rng.randint(1, 3) * size and time.monotonic() < deadline:
            time.sleep(0.001)
        # Aim at a write in progress (the file's size grows page by page during one write),
        # which is when a kill cuts a line; give up aiming after a while.
        with open(path, "rb") as file:
            aim = time.monotonic() + 2
            while time.monotonic() < aim:
                end = os.fstat(file.fileno()).st_size
                if os.pread(file.fileno(), 1, end - 1) != b"\n":
                    break
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    # One more run that ends well: its entries are whole too.
    with HttpSinkConnector(HttpSinkConfig(DEAD_URL, dead_letter=str(path))) as sink:
        sink.put(ConnectRecord("last", record_id="final")).exception()
        assert sink.stats().dead_lettered == 1

    entries, broken = split_lines(path)
    ids = [entry["record_id"] for entry in entries]
    for run in range(runs):
        assert f"run{run}-first" in ids  # never glued onto the previous run's fragment
    assert ids[-1] == "final"
    assert 1 <= len(broken) <= runs  # at most the one line each kill cut (and the aim hit at least once)
    assert path.read_bytes().endswith(b"\n")
    print(f"\n{runs} kills: {len(broken)} cut lines, {len(entries)} whole lines")  # shown with -s

    with HttpSinkConnector(HttpSinkConfig(server.url, max_pending=4)) as sink:
        report = replay(path, sink)
    assert [number for number, _ in report.skipped] == broken
    assert report.resent == report.succeeded == len(entries) and report.failed == 0


# -- a full disk -----------------------------------------------------------------------------

FULL_DISK_WRITER = textwrap.dedent(
    """
    import json, logging, resource, signal, sys, threading
    from eventmesh_http_sink import ConnectRecord, HttpSinkConfig, HttpSinkConnector, RetryConfig

    path, limit, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    calls = []

    class Callback:
        def on_success(self, result):
            calls.append(result.record_id)

        def on_exception(self, context):
            calls.append(context.record_id)

    config = HttpSinkConfig(
        "http://127.0.0.1:1/", dead_letter=path, retry=RetryConfig(max_retries=0), max_workers=4
    )
    sink = HttpSinkConnector(config)
    for i in range(count):
        sink.put(ConnectRecord("d" * size, record_id=f"{limit}-{i}", callback=Callback()))
    sink.flush(30)
    raised = None
    try:
        sink.close()
    except BaseException as exc:
        raised = repr(exc)
    stats = sink.stats()
    print(json.dumps({
        "raised": raised,
        "callbacks": len(calls),
        "failed": stats.failed,
        "dead_lettered": stats.dead_lettered,
        "dead_letter_errors": stats.dead_letter_errors,
        "threads": [t.name for t in threading.enumerate() if t is not threading.main_thread()],
    }))
    """
)


def run_full_disk_writer(path: Path, limit: int, count: int, size: int) -> tuple[dict, str]:
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK_WRITER, str(path), str(limit), str(count), str(size)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_full_disk_counts_what_the_file_holds_and_close_stops_everything(tmp_path, server):
    path = tmp_path / "dl.jsonl"
    limit, count, size = 1_000_000, 60, 30_000  # about 33 lines fit, one is cut, the rest fail
    out, stderr = run_full_disk_writer(path, limit, count, size)
    assert out["raised"] is None  # close() never raises because of the disk
    assert out["threads"] == []  # ... and still stops every thread
    assert out["callbacks"] == out["failed"] == count  # every record's callback ran
    entries, broken = split_lines(path)
    assert out["dead_lettered"] == len(entries) > 0  # what the counter says is what the file holds
    assert out["dead_letter_errors"] == count - len(entries) > 0
    assert path.stat().st_size <= limit
    cut = not path.read_bytes().endswith(b"\n")
    assert broken == ([len(entries) + 1] if cut else [])
    # One ERROR for the run of failures, no traceback, nothing printed raw.
    assert stderr.count("writing the dead letter of record") == 1, stderr
    assert "ends inside a line" not in stderr  # its own cut line is the failure already logged
    assert "Traceback" not in stderr and "EFBIG" not in stderr.replace("File too large", "")

    # Space comes back: the next run starts on a new line, and counts what it writes.
    out2, stderr2 = run_full_disk_writer(path, 0, 5, 100)
    assert out2["dead_lettered"] == 5 and out2["dead_letter_errors"] == 0 and out2["raised"] is None
    assert ("ends inside a line" in stderr2) == cut
    entries2, broken2 = split_lines(path)
    assert len(entries2) == len(entries) + 5 and broken2 == broken
    assert sorted(e["record_id"] for e in entries2[-5:]) == [f"0-{i}" for i in range(5)]
    with HttpSinkConnector(HttpSinkConfig(server.url)) as sink:
        report = replay(path, sink)
    assert [number for number, _ in report.skipped] == broken
    assert report.resent == report.succeeded == len(entries2)


@pytest.mark.parametrize("size", [10, 3000])
def test_a_failed_write_is_counted_once_and_never_completed_later(tmp_path, size):
    # In-process: a write that fails part way leaves no buffered remainder that a later
    # write or close() would complete (the old writer's "error counted, line in the file").
    import resource

    path = tmp_path / "dl.jsonl"
    writer = DeadLetterWriter(str(path))
    writer.write(lambda: {"record_id": "ok", "data": "x"}, "ok")
    used = path.stat().st_size
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (used + size // 2, hard))
        writer.write(lambda: {"record_id": "cut", "data": "y" * size}, "cut")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert (writer.written, writer.errors) == (1, 1)
    writer.write(lambda: {"record_id": "next", "data": "z"}, "next")
    writer.close()
    entries, broken = split_lines(path)
    assert [e["record_id"] for e in entries] == ["ok", "next"] and broken == [2]
    assert (writer.written, writer.errors) == (2, 1)
