"""The command line, end to end: real subprocesses against real loopback servers."""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from eventmesh_http_sink import HttpSinkConfig
from eventmesh_http_sink.cli import main
from eventmesh_http_sink.cli.main import parse_line
from eventmesh_http_sink.testing import FaultServer, RandomFaults, Reply

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("COLUMNS", None)
    env.update(extra)
    return env


def run_cli(*args: str, stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventmesh_http_sink", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
        timeout=timeout,
    )


def summary_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    last = proc.stdout.strip().splitlines()[-1]
    result: dict[str, Any] = json.loads(last)
    return result


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def records(n: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [{"record_id": f"{prefix}{i}", "data": {"i": i}, "extensions": {"topic": "t"}} for i in range(n)]


@pytest.fixture
def server() -> Any:
    with FaultServer() as s:
        yield s


def test_send_all_delivered_exit_0(server: FaultServer, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(40))
    proc = run_cli("send", server.url, str(src), "--json")
    assert proc.returncode == 0, proc.stderr
    s = summary_of(proc)
    assert (s["read"], s["submitted"], s["succeeded"], s["failed"], s["rejected"]) == (40, 40, 40, 0, 0)
    assert s["latency_p50"] is not None and s["latency_p99"] >= s["latency_p50"]
    assert server.delivered_keys() == {f"r{i}" for i in range(40)}
    bodies = {r.key: json.loads(r.body) for r in server.requests}
    assert bodies["r7"] == {"i": 7}
    assert json.loads(server.requests[0].headers["extension"]) == {"topic": "t"}
    # Not a terminal: plain progress lines on stderr, ending with the final state.
    assert "progress: sent 40" in proc.stderr


def test_send_some_failed_exit_1_with_summary_table(server: FaultServer, tmp_path: Path) -> None:
    server.plan("r3", *[Reply(400, body=b"nope")] * 5)
    # garbage, not reset: a reset on a reused connection is resent at once, not retried
    server.plan("r5", Reply(503, headers={"Retry-After": "0"}), Reply.garbage(), Reply(200))
    src = write_jsonl(tmp_path / "in.jsonl", records(10))
    proc = run_cli("send", server.url, str(src), "--retries", "3")
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    assert "succeeded            9" in out
    assert "failed               1  (http_400: 1)" in out
    assert "retries              2  (ResponseError: 1, http_503: 1)" in out
    assert "failures went to     this summary only (first 10 listed)" in out
    assert "failed record r3: http_400" in out
    assert server.keys().count("r3") == 1  # 400 is not retried


def test_rejects_file_has_line_numbers_and_rest_continues(server: FaultServer, tmp_path: Path) -> None:
    lines: list[Any] = records(6)
    lines.insert(2, "{not json")
    lines.insert(4, json.dumps([1, 2]))
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    rejects = tmp_path / "rejects.jsonl"
    proc = run_cli("send", server.url, str(src), "--rejects", str(rejects), "--json", "-q")
    assert proc.returncode == 1  # nothing failed, but two lines were rejected
    s = summary_of(proc)
    assert (s["read"], s["succeeded"], s["rejected"]) == (8, 6, 2)
    got = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [g["line"] for g in got] == [3, 5]
    assert got[0]["text"] == "{not json" and "invalid JSON" in got[0]["error"]
    assert '"data"' in got[1]["error"]
    assert server.delivered_keys() == {f"r{i}" for i in range(6)}


def test_rejects_default_to_stderr(server: FaultServer, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [*records(2), "oops"])
    proc = run_cli("send", server.url, str(src), "-q")
    assert proc.returncode == 1
    assert "line 3: rejected: invalid JSON" in proc.stderr
    assert proc.stdout == ""  # --quiet: no summary


def test_strict_stops_at_first_bad_line(server: FaultServer, tmp_path: Path) -> None:
    lines: list[Any] = records(6)
    lines.insert(3, "{bad")
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    proc = run_cli("send", server.url, str(src), "--strict", "--json")
    assert proc.returncode == 2
    assert "line 4: rejected" in proc.stderr and "--strict" in proc.stderr
    s = summary_of(proc)
    assert s["succeeded"] == 3 and s["rejected"] == 1
    assert server.delivered_keys() == {"r0", "r1", "r2"}  # nothing after the bad line was sent


def test_stdin_and_raw_lines(server: FaultServer) -> None:
    proc = run_cli("send", server.url, "-", "--raw-lines", "--json", stdin='{"a": 1}\nplain text\n42\n')
    assert proc.returncode == 0, proc.stderr
    assert summary_of(proc)["succeeded"] == 3
    assert sorted(r.body for r in server.requests) == sorted([b'{"a":1}', b"plain text", b"42"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["send", "http://127.0.0.1:1/", "/no/such/file.jsonl"], "cannot read"),
        (["send", "ftp://x/", "-"], "urls"),
        (["send", "http://127.0.0.1:1/", "-", "--header", "nocolon"], "NAME:VALUE"),
        (["send", "http://127.0.0.1:1/", "-", "--workers", "0"], "max_workers"),
        (["send", "http://127.0.0.1:1/", "-", "--bearer-token-env", "EMHS_UNSET_VAR"], "EMHS_UNSET_VAR"),
        (["send"], "URL"),
        (["send", "http://127.0.0.1:1/", "-", "--timeout", "0"], "--timeout must be > 0"),
        (["send", "http://127.0.0.1:1/", "-", "--header", "X-A: b\r\nX-B: c"], "headers"),
        (["send", "http://127.0.0.1:1/", "-", "--rejects", "/no/such/dir/r.jsonl"], "cannot write"),
        (["send", "http://127.0.0.1:1/", "-", "--progress-interval", "0"], "--progress-interval"),
        (["demo", "--records", "1"], "--records"),
        (["receive", "--fail-rate", "2"], "--fail-rate"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_options_this_build_lacks_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    fields = attrs.fields_dict(HttpSinkConfig)
    for option, value, field in [
        ("--batch", "10", "batch"),
        ("--strategy", "failover", "delivery_strategy"),
        ("--dead-letter", "x.jsonl", "dead_letter"),
        ("--rate-limit", "5", "rate_limit"),
        ("--encoding", "raw", "encoding"),
    ]:
        if field in fields:
            continue
        assert main(["send", "http://127.0.0.1:1/", "-", option, value]) == 2
        assert f"{option} is not supported by this build" in capsys.readouterr().err


def test_bearer_token_sent_never_printed(server: FaultServer, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(2))
    server.plan("r1", *[Reply(401)] * 4)
    env = _env(EMHS_TOKEN="s3cr3t-token")
    args = ["send", server.url, str(src), "-vv", "--bearer-token-env", "EMHS_TOKEN"]
    args += ["--header", "X-Trace: abc"]
    proc = subprocess.run(
        [sys.executable, "-m", "eventmesh_http_sink", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 1
    assert server.requests[0].headers["authorization"] == "Bearer s3cr3t-token"
    assert server.requests[0].headers["x-trace"] == "abc"
    assert "record r1 failed after 1 attempt(s)" in proc.stderr  # -v: one WARNING per final failure
    assert "s3cr3t" not in proc.stderr + proc.stdout


def test_replay_dead_letter_file(server: FaultServer, tmp_path: Path) -> None:
    dead = write_jsonl(
        tmp_path / "dead.jsonl",
        [
            {
                "record_id": "d1",
                "data": base64.b64encode(b"\x00\x01bin").decode(),
                "data_encoding": "base64",  # the dead-letter format of dead_letter.py
                "extensions": {"topic": "x"},
                "error": "HttpStatusError",
                "attempts": 4,
            },
            {"record_id": "d2", "data": {"k": "v"}, "data_encoding": "json", "error": "ResponseError"},
            "garbage line",
        ],
    )
    proc = run_cli("replay", str(dead), server.url, "--json")
    s = summary_of(proc)
    assert s["succeeded"] == 2
    bodies = {r.key: r.body for r in server.requests}
    assert bodies == {"d1": b"\x00\x01bin", "d2": b'{"k":"v"}'}  # ids kept: same Idempotency-Key
    assert s["rejected"] == 1 and "line 3" in proc.stderr
    assert proc.returncode == 1


def test_ctrl_c_cancels_pending_and_exits_130(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(3))
    with FaultServer(responder=lambda request: Reply.hang(5)) as hanging:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eventmesh_http_sink", "send", hanging.url, str(src), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=_env(),
        )
        deadline = time.monotonic() + 10
        while len(hanging.keys()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    s = json.loads(out.strip().splitlines()[-1])
    assert s["failed"] == 3 and s["failures_by_kind"] == {"SinkClosedError": 3}


def test_replay_uses_the_library_replay_when_present(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import eventmesh_http_sink
    from eventmesh_http_sink import ConnectRecord

    calls = []

    def fake_replay(path: str, connector: Any) -> Any:
        calls.append(path)
        connector.put(ConnectRecord("again", record_id="lib-1")).result()

        @attrs.frozen
        class Report:
            resent: int = 1
            skipped: tuple[tuple[int, str], ...] = ((2, "record_id is missing"),)

        return Report()

    monkeypatch.setattr(eventmesh_http_sink, "replay", fake_replay, raising=False)
    dead = write_jsonl(tmp_path / "dead.jsonl", [{"record_id": "lib-1", "data": "again"}, {"data": 1}])
    assert main(["replay", str(dead), server.url, "--json", "-q"]) == 1  # one skipped line
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert calls == [str(dead)]
    assert (s["read"], s["succeeded"], s["rejected"]) == (2, 1, 1)
    assert server.delivered_keys() == {"lib-1"}


def _start_receiver(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventmesh_http_sink", "receive", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_env(),
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("listening on http://127.0.0.1:"), first
    return proc, first.split()[2]


def test_receive_stores_requests_and_send_retries_its_faults(tmp_path: Path) -> None:
    out = tmp_path / "received.jsonl"
    receiver, url = _start_receiver("--fail-rate", "0.3", "--seed", "1", "--out", str(out))
    try:
        src = write_jsonl(tmp_path / "in.jsonl", records(30))
        proc = run_cli("send", url, str(src), "--retries", "10", "--json", "--header", "Authorization: x")
        assert proc.returncode == 0, proc.stderr
        s = summary_of(proc)
        assert s["succeeded"] == 30 and s["retries"] > 0
        assert sum(s["retries_by_cause"].values()) == s["retries"]
    finally:
        receiver.send_signal(signal.SIGINT)
        _, err = receiver.communicate(timeout=10)
    assert receiver.returncode == 0
    stored = [json.loads(x) for x in out.read_text().splitlines()]
    # Plus requests resent at once after a reset on a reused connection (not retries).
    resets = sum(1 for e in stored if e["answered"] == "reset")
    assert 30 + s["retries"] <= len(stored) <= 30 + s["retries"] + resets
    assert f"received {len(stored)} request(s)" in err
    ok = {e["key"]: e for e in stored if e["answered"] == 200}
    assert set(ok) == {f"r{i}" for i in range(30)}
    assert ok["r4"]["body"] == {"i": 4}
    assert ok["r4"]["headers"]["authorization"] == "***"


def test_receive_prints_a_line_per_request() -> None:
    receiver, url = _start_receiver()
    try:
        proc = run_cli("send", url, "-", "--json", stdin='{"record_id": "abc", "data": "hi"}\n')
        assert proc.returncode == 0
        assert receiver.stdout is not None
        line = receiver.stdout.readline()
    finally:
        receiver.send_signal(signal.SIGINT)
        receiver.communicate(timeout=10)
    assert line.strip() == "POST / key=abc 2 bytes -> 200"


def test_progress_bar_under_a_pseudo_terminal(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(20))
    with FaultServer(responder=RandomFaults(latency=0.05)) as slow:
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "eventmesh_http_sink", "send", slow.url, str(src), "--workers", "2"],
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            cwd=ROOT,
            env=_env(TERM="xterm", COLUMNS="120"),
        )
        os.close(slave)
        chunks = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        stdout, _ = proc.communicate(timeout=10)
        os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0
    assert "\x1b[" in screen  # drawn with terminal control sequences, not plain lines
    assert "progress:" not in screen
    assert "succeeded 20  failed 0  retrying 0" in screen
    assert screen.count("rec/s") >= 2  # redrawn while running
    assert "succeeded            20" in stdout


def test_demo_exit_0_with_summary(tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    t0 = time.monotonic()
    proc = run_cli("--demo", "--records", "1500", "--json", "--dead-letter", str(dead))
    assert proc.returncode == 0, proc.stderr
    s = summary_of(proc)
    assert s["succeeded"] == 1499 and s["failed"] == 1
    assert s["retries"] > 0 and "http_503" in s["retries_by_cause"]
    assert s["failed_records"][0]["record_id"] == "demo-poison-record"
    assert time.monotonic() - t0 < 20
    if "dead_letter" in attrs.fields_dict(HttpSinkConfig):  # where the build has dead letters
        assert [json.loads(x)["record_id"] for x in dead.read_text().splitlines()] == ["demo-poison-record"]
        assert s["failures_went_to"] == f"dead-letter file {dead} (1 written)"
    else:
        assert not dead.exists()
        assert s["failures_went_to"].startswith("this summary only")


def test_demo_text_output() -> None:
    proc = run_cli("demo", "--records", "300")
    assert proc.returncode == 0, proc.stderr
    assert "succeeded            299" in proc.stdout
    assert "demo: worked as designed" in proc.stdout


def test_parse_line_dead_letter_flags() -> None:
    rec = parse_line('{"data": "AAE=", "data_encoding": "base64", "record_id": "x"}', raw=False)
    assert rec.data == b"\x00\x01" and rec.record_id == "x"
    with pytest.raises(ValueError, match="base64"):
        parse_line('{"data": "@@@", "data_base64": true}', raw=False)
    with pytest.raises(ValueError, match="record_id"):
        parse_line('{"data": 1, "record_id": "a\\nb"}', raw=False)


def test_progress_falls_back_to_plain_lines_without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from eventmesh_http_sink import HttpSinkConnector
    from eventmesh_http_sink.cli.output import Progress

    for name in ("rich", "rich.console", "rich.progress"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    out = io.StringIO()
    connector = HttpSinkConnector(HttpSinkConfig("http://127.0.0.1:1/"))
    progress = Progress(connector.stats, out, "bar", interval=30).start()
    assert progress.mode == "lines"
    progress.stop()
    assert out.getvalue().startswith("progress: sent 0")
