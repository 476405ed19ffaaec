"""The command line, end to end: real subprocesses against real loopback servers.

Signals and pipes are in test_cli_stopping.py; the line reader in test_cli_lines.py.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from eventmesh_http_sink import ConnectRecord, HttpSinkConfig, HttpSinkConnector, HttpStatusError, RetryConfig
from eventmesh_http_sink.cli import main
from eventmesh_http_sink.cli.lines import parse_line
from eventmesh_http_sink.testing import FaultServer, RandomFaults, Reply, free_port

from .cli_helpers import (
    COMMAND,
    accounted,
    cli_env,
    dead_letter_files,
    has_traceback,
    ids_in,
    records,
    run_cli,
    summary_of,
    write_jsonl,
)


@pytest.fixture
def server() -> Any:
    with FaultServer() as s:
        yield s


def as_command(printed: str) -> list[str]:
    """A command the summary printed, as argv for this interpreter."""
    argv = shlex.split(printed)
    assert argv[1:3] == ["-m", "eventmesh_http_sink"], printed
    return [*COMMAND, *argv[3:]]


def test_send_all_delivered_exit_0_and_no_dead_letter_file(server: FaultServer, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(40))
    proc = run_cli("send", server.url, str(src), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    s = summary_of(proc.stdout)
    assert (s["read"], s["submitted"], s["delivered"], s["failed"], s["cancelled"], s["rejected"]) == (
        40,
        40,
        40,
        0,
        0,
        0,
    )
    assert s["failures_went_to"] is None and s["resend_command"] is None
    assert dead_letter_files(tmp_path) == []  # made only when something failed
    assert s["latency_p50"] is not None and s["latency_p99"] >= s["latency_p50"]
    assert server.delivered_keys() == {f"r{i}" for i in range(40)}
    bodies = {r.key: json.loads(r.body) for r in server.requests}
    assert bodies["r7"] == {"i": 7}
    assert json.loads(server.requests[0].headers["extension"]) == {"topic": "t"}
    # Not a terminal: plain progress lines on stderr, ending with the final state.
    assert "progress: sent 40  " in proc.stderr and "delivered 40  failed 0" in proc.stderr


def test_failures_go_to_a_dead_letter_file_and_the_printed_command_resends_them(
    server: FaultServer, tmp_path: Path
) -> None:
    server.plan("r3", Reply(400, body=b"nope"))
    # garbage, not reset: a reset on a reused connection is resent at once, not retried
    server.plan("r5", Reply(503, headers={"Retry-After": "0"}), Reply.garbage(), Reply(200))
    src = write_jsonl(tmp_path / "in.jsonl", records(10))
    proc = run_cli("send", server.url, str(src), "--retries", "4", "--header", "X-Env: test", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    assert "delivered            9\n" in out
    assert "failed               1  (http_400: 1)" in out
    assert "retries              2  (ResponseError: 1, http_503: 1)" in out
    assert "failed record r3: http_400" in out
    [dead] = dead_letter_files(tmp_path)
    assert ids_in(dead) == ["r3"]
    assert f"failures went to     {dead.name}  (1 written)" in out
    [resend] = [
        line.split("resend them with", 1)[1].strip() for line in out.splitlines() if "resend them" in line
    ]
    assert resend.endswith(f"replay {dead.name} {server.url} --retries 4 --header 'X-Env: test'")
    assert server.keys().count("r3") == 1  # 400 is not retried

    again = subprocess.run(as_command(resend), capture_output=True, text=True, cwd=tmp_path, env=cli_env())
    assert again.returncode == 0, again.stderr
    assert server.keys().count("r3") == 2 and "r3" in server.delivered_keys()
    assert [r.headers["x-env"] for r in server.requests if r.key == "r3"] == ["test", "test"]


def test_no_dead_letter_keeps_failures_in_the_summary_only(server: FaultServer, tmp_path: Path) -> None:
    server.plan("r1", Reply(400))
    src = write_jsonl(tmp_path / "in.jsonl", records(3))
    proc = run_cli("send", server.url, str(src), "--no-dead-letter", cwd=tmp_path)
    assert proc.returncode == 1
    assert "failures went to     this summary only (first 1 failed listed; --no-dead-letter)" in proc.stdout
    assert "resend them" not in proc.stdout
    assert dead_letter_files(tmp_path) == []


def test_a_dead_port_fails_everything_counts_no_rate_and_resends_from_the_file(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(500))
    url = f"http://127.0.0.1:{free_port()}/"
    proc = run_cli("send", url, str(src), "--json", "--retries", "1", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    s = summary_of(proc.stdout)
    assert (s["read"], s["delivered"], s["failed"]) == (500, 0, 500)
    assert s["records_per_second"] == 0  # records/s counts delivered records, not failures
    assert s["failures_by_kind"] == {"EndpointUnavailableError": 500}
    assert len(s["failed_records"]) == 10
    [dead] = dead_letter_files(tmp_path)
    assert s["failures_went_to"] == dead.name and s["dead_lettered"] == 500
    assert sorted(ids_in(dead)) == sorted(f"r{i}" for i in range(500))
    assert s["resend_command"].endswith(f"replay {dead.name} {url} --retries 1")
    text = run_cli("send", url, str(src), "--retries", "0", "--no-dead-letter", cwd=tmp_path).stdout
    assert "failed records       the first 10 of 500 are listed" in text
    [listed] = [line for line in text.splitlines() if line.startswith("  failed records r")]
    assert (
        listed.count(", r") == 9 and "EndpointUnavailableError cannot connect" in listed
    )  # one line per error
    with FaultServer(port=int(url.rsplit(":", 1)[1].strip("/"))) as back:  # the endpoint comes back
        again = subprocess.run(
            as_command(s["resend_command"]), capture_output=True, text=True, cwd=tmp_path, env=cli_env()
        )
        assert again.returncode == 0, again.stderr
        assert back.delivered_keys() == {f"r{i}" for i in range(500)}


def test_query_values_are_hidden_in_the_resend_command(server: FaultServer, tmp_path: Path) -> None:
    server.plan("r0", Reply(400))
    src = write_jsonl(tmp_path / "in.jsonl", records(1))
    proc = run_cli("send", server.url + "hook?api_key=s3cr3t&tenant=7", str(src), cwd=tmp_path)
    assert proc.returncode == 1
    assert "s3cr3t" not in proc.stdout
    assert "hook?api_key=***&tenant=***'  (query values shown as ***: put yours back)" in proc.stdout


def test_rejects_file_has_line_numbers_and_rest_continues(server: FaultServer, tmp_path: Path) -> None:
    lines: list[Any] = records(6)
    lines.insert(2, "{not json")
    lines.insert(4, json.dumps([1, 2]))
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    rejects = tmp_path / "rejects.jsonl"
    proc = run_cli("send", server.url, str(src), "--rejects", str(rejects), "--json", "-q", cwd=tmp_path)
    assert proc.returncode == 1  # nothing failed, but two lines were rejected
    s = summary_of(proc.stdout)
    assert (s["read"], s["delivered"], s["rejected"]) == (8, 6, 2) and accounted(s)
    got = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [g["line"] for g in got] == [3, 5]
    assert got[0]["text"] == "{not json" and "invalid JSON" in got[0]["error"]
    assert '"data"' in got[1]["error"]
    assert server.delivered_keys() == {f"r{i}" for i in range(6)}


def test_rejects_default_to_stderr(server: FaultServer, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [*records(2), "oops"])
    proc = run_cli("send", server.url, str(src), "-q", cwd=tmp_path)
    assert proc.returncode == 1
    assert "line 3: rejected: invalid JSON" in proc.stderr
    assert proc.stdout == ""  # --quiet: no summary


def test_stderr_shows_the_first_rejected_lines_and_counts_the_rest(
    server: FaultServer, tmp_path: Path
) -> None:
    # A wrong file of a thousand lines is twenty-one lines of stderr, not a thousand; all are counted.
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(1000)))  # no "data" key
    proc = run_cli("send", server.url, str(src), "--json", cwd=tmp_path)
    rejected = [ln for ln in proc.stderr.splitlines() if ": rejected" in ln]
    assert len(rejected) == 21, proc.stderr[-2000:]
    assert rejected[19].startswith("eventmesh-http-sink: line 20: rejected: expected an object")
    assert "line 21: rejected; further rejected lines are counted in the summary" in rejected[20]
    s = summary_of(proc.stdout)
    assert (s["read"], s["rejected"]) == (1000, 1000) and accounted(s)


@pytest.mark.parametrize("command", ["send", "replay"])
def test_bad_bytes_reject_one_line_and_the_lines_around_it_are_sent(
    command: str, server: FaultServer, tmp_path: Path
) -> None:
    # 300 lines in one 64 KiB chunk; line 196 has a byte that is not UTF-8 and line 250 is
    # not JSON: each is one rejected line, never a traceback, and the 298 others arrive.
    lines = [json.dumps(r).encode() for r in records(300)]
    lines[195] = lines[195].replace(b'"i": 195', b'"i": "\xff"')
    lines[249] = b"{not json"
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    args = [command, server.url, str(src)] if command == "send" else [command, str(src), server.url]
    proc = run_cli(*args, "--json", cwd=tmp_path)
    assert proc.returncode == 1
    assert not has_traceback(proc.stderr), proc.stderr
    assert "line 196: rejected: invalid UTF-8 (byte 0xff at column" in proc.stderr
    assert "line 250: rejected: invalid JSON: Expecting property name" in proc.stderr
    s = summary_of(proc.stdout)
    assert (s["read"], s["delivered"], s["rejected"]) == (300, 298, 2) and accounted(s)
    assert server.delivered_keys() == {f"r{i}" for i in range(300)} - {"r195", "r249"}


def test_send_and_replay_word_a_bad_line_the_same(server: FaultServer, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [records(1)[0], '{"record_id": "x", "data": 1,}'])
    sent = run_cli("send", server.url, str(src), "-q", cwd=tmp_path)
    replayed = run_cli("replay", str(src), server.url, "-q", cwd=tmp_path)
    assert sent.returncode == replayed.returncode == 1
    assert "line 2: rejected: invalid JSON: Expecting property name enclosed in double quotes" in sent.stderr
    assert sent.stderr == replayed.stderr


def test_strict_stops_at_first_bad_line(server: FaultServer, tmp_path: Path) -> None:
    lines: list[Any] = records(6)
    lines.insert(3, "{bad")
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    proc = run_cli("send", server.url, str(src), "--strict", "--json", cwd=tmp_path)
    assert proc.returncode == 2
    assert "line 4: rejected" in proc.stderr and "--strict" in proc.stderr
    s = summary_of(proc.stdout)
    assert s["delivered"] == 3 and s["rejected"] == 1 and s["stopped_by"] == "--strict"
    assert s["rest_of_input"].startswith("lines after 4 were not read; send them with: tail -n +5 ")
    assert server.delivered_keys() == {"r0", "r1", "r2"}  # nothing after the bad line was sent


def test_stdin_and_raw_lines(server: FaultServer, tmp_path: Path) -> None:
    proc = run_cli(
        "send", server.url, "-", "--raw-lines", "--json", stdin='{"a": 1}\nplain text\n42\n', cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert summary_of(proc.stdout)["delivered"] == 3
    assert sorted(r.body for r in server.requests) == sorted([b'{"a":1}', b"plain text", b"42"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["send", "http://127.0.0.1:1/", "/no/such/file.jsonl"], "cannot read"),
        (["send", "ftp://x/", "-"], "URL: 'ftp://x/': scheme must be http or https"),
        (["send", "http://127.0.0.1:1/", "-", "--header", "nocolon"], "NAME:VALUE"),
        (
            ["send", "http://127.0.0.1:1/", "-", "--workers", "0"],
            "error: --workers: must be a positive int, got 0",
        ),
        (
            ["send", "http://127.0.0.1:1/", "-", "--max-pending", "0"],
            "error: --max-pending: must be a positive",
        ),
        (
            ["send", "http://127.0.0.1:1/", "-", "--retries", "-1"],
            "error: --retries: must be an int >= 0, got -1",
        ),
        (
            ["send", "http://127.0.0.1:1/", "-", "--timeout", "0"],
            "error: --timeout: must be a positive number",
        ),
        (
            ["send", "http://127.0.0.1:1/", "-", "--batch", "0"],
            "error: --batch: must be a positive int, got 0",
        ),
        (
            ["send", "http://127.0.0.1:1/", "-", "--rate-limit", "-2"],
            "error: --rate-limit: must be None or a number",
        ),
        (["send", "http://127.0.0.1:1/", "-", "--bearer-token-env", "EMHS_UNSET_VAR"], "EMHS_UNSET_VAR"),
        (["send"], "URL"),
        (
            ["send", "http://127.0.0.1:1/", "-", "--header", "X-A: b\r\nX-B: c"],
            "error: --header: header 'X-A'",
        ),
        (["send", "http://127.0.0.1:1/", "-", "--rejects", "/no/such/dir/r.jsonl"], "cannot write"),
        (
            ["send", "http://127.0.0.1:1/", "-", "--dead-letter", "/no/such/dir/d.jsonl"],
            "error: --dead-letter:",
        ),
        (["send", "http://127.0.0.1:1/", "-", "--progress-interval", "0"], "--progress-interval"),
        (["send", "http://127.0.0.1:1/", "-", "--dead-letter", "x", "--no-dead-letter"], "not allowed with"),
        (["demo", "--records", "1"], "--records"),
        (["receive", "--fail-rate", "2"], "--fail-rate"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_naming_the_flag(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    for field in (
        "max_workers",
        "max_pending",
        "max_retries",
        "read_timeout",
        "batch.max_records",
        "rate_limit",
    ):
        assert field not in err  # the flag the user typed, not the library's field


@pytest.mark.parametrize("command", ["send", "replay"])
def test_a_misspelt_flag_prints_the_subcommand_usage_with_a_suggestion(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "a", "b", "--retrys", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: eventmesh-http-sink {command} ")
    assert "--max-pending N" in err  # the subcommand's options, not the top-level usage
    assert "unrecognized arguments: --retrys 5" in err
    assert "--retrys: did you mean --retries?" in err


def test_bearer_token_sent_never_printed(server: FaultServer, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(2))
    server.plan("r1", *[Reply(401)] * 4)
    args = [
        "send",
        server.url,
        str(src),
        "-vv",
        "--bearer-token-env",
        "EMHS_TOKEN",
        "--header",
        "X-Trace: abc",
    ]
    proc = run_cli(*args, cwd=tmp_path, EMHS_TOKEN="s3cr3t-token")
    assert proc.returncode == 1
    assert server.requests[0].headers["authorization"] == "Bearer s3cr3t-token"
    assert server.requests[0].headers["x-trace"] == "abc"
    assert "record r1 failed after 1 attempt(s)" in proc.stderr  # -v: the first failure of its kind
    assert "--bearer-token-env EMHS_TOKEN" in proc.stdout  # the resend command names the variable
    assert "s3cr3t" not in proc.stderr + proc.stdout + dead_letter_files(tmp_path)[0].read_text()


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
            {"record_id": "d3", "data": "text", "data_encoding": "text"},
            "garbage line",
            {"data": "no id"},
        ],
    )
    proc = run_cli("replay", str(dead), server.url, "--json", cwd=tmp_path)
    s = summary_of(proc.stdout)
    assert s["delivered"] == 3
    bodies = {r.key: r.body for r in server.requests}
    assert bodies == {
        "d1": b"\x00\x01bin",
        "d2": b'{"k":"v"}',
        "d3": b"text",
    }  # ids kept: same Idempotency-Key
    assert s["rejected"] == 2 and "line 4: rejected: invalid JSON" in proc.stderr
    assert "line 5: rejected: record_id is missing" in proc.stderr
    assert proc.returncode == 1 and accounted(s)


def test_replay_lists_the_failed_ids_and_reports_where_they_went(server: FaultServer, tmp_path: Path) -> None:
    dead = write_jsonl(tmp_path / "dead.jsonl", records(5, prefix="d"))
    server.plan("d1", Reply(400))
    server.plan("d3", Reply(422))
    proc = run_cli("replay", str(dead), server.url, "--json", cwd=tmp_path)
    assert proc.returncode == 1
    s = summary_of(proc.stdout)
    assert sorted(f["record_id"] for f in s["failed_records"]) == ["d1", "d3"]
    [again] = dead_letter_files(tmp_path)
    assert s["failures_went_to"] == again.name and sorted(ids_in(again)) == ["d1", "d3"]
    text = run_cli("replay", str(again), server.url, cwd=tmp_path)  # d1 and d3 are accepted now
    assert text.returncode == 0 and "delivered            2" in text.stdout
    proc = run_cli("replay", str(dead), server.url, cwd=tmp_path)
    assert proc.returncode == 0


def test_replay_refuses_to_dead_letter_into_the_file_it_reads(tmp_path: Path) -> None:
    dead = write_jsonl(tmp_path / "dead.jsonl", records(1))
    proc = run_cli("replay", str(dead), "http://127.0.0.1:1/", "--dead-letter", str(dead), cwd=tmp_path)
    assert proc.returncode == 2 and "--dead-letter must not be the file being read" in proc.stderr


def _start_receiver(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*COMMAND, "receive", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
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
        proc = run_cli(
            "send", url, str(src), "--retries", "10", "--json", "--header", "Authorization: x", cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr
        s = summary_of(proc.stdout)
        assert s["delivered"] == 30 and s["retries"] > 0
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


def test_receive_prints_a_line_per_request(tmp_path: Path) -> None:
    receiver, url = _start_receiver()
    try:
        proc = run_cli("send", url, "-", "--json", stdin='{"record_id": "abc", "data": "hi"}\n', cwd=tmp_path)
        assert proc.returncode == 0
        assert receiver.stdout is not None
        line = receiver.stdout.readline()
    finally:
        receiver.send_signal(signal.SIGTERM)  # SIGTERM ends it like Ctrl-C
        _, err = receiver.communicate(timeout=10)
    assert receiver.returncode == 0 and "received 1 request(s)" in err
    assert line.strip() == "POST / key=abc 2 bytes -> 200"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_receive_out_on_a_full_disk_answers_500_and_says_why(tmp_path: Path) -> None:
    receiver, url = _start_receiver("--out", "/dev/full")
    try:
        with HttpSinkConnector(HttpSinkConfig(url, retry=RetryConfig(max_retries=0))) as sink:
            error = sink.put(ConnectRecord({"a": 1}, record_id="full-1")).exception(timeout=10)
        assert isinstance(error, HttpStatusError) and error.status == 500  # answered, not reset
        assert b"No space left on device" in error.body
    finally:
        receiver.send_signal(signal.SIGINT)
        _, err = receiver.communicate(timeout=10)
    assert receiver.returncode == 0 and not has_traceback(err)
    assert "receive: cannot write /dev/full: No space left on device (the request is answered 500)" in err
    assert "received 1 request(s); 1 could not be written and were answered 500" in err


def test_progress_bar_under_a_pseudo_terminal(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(20))
    with FaultServer(responder=RandomFaults(latency=0.05)) as slow:
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [*COMMAND, "send", slow.url, str(src), "--workers", "2"],
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            cwd=tmp_path,
            env=cli_env(TERM="xterm", COLUMNS="120"),
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
    assert "delivered 20  failed 0  retrying 0" in screen
    assert screen.count("rec/s") >= 2  # redrawn while running
    assert "delivered            20" in stdout


def test_demo_json_keeps_the_dead_letter_file_it_was_given(tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    proc = run_cli("--demo", "--records", "1500", "--json", "--dead-letter", str(dead), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    s = summary_of(proc.stdout)
    assert s["delivered"] == 1499 and s["failed"] == 1 and accounted(s)
    assert s["retries"] > 0 and "http_503" in s["retries_by_cause"]
    assert s["failed_records"][0]["record_id"] == "demo-poison-record"
    assert ids_in(dead) == ["demo-poison-record"]
    assert s["failures_went_to"] == str(dead) and s["dead_lettered"] == 1


def test_demo_cleans_up_its_temp_directory_unless_asked_to_keep_it(tmp_path: Path) -> None:
    proc = run_cli("demo", "--records", "300", cwd=tmp_path, TMPDIR=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "delivered            299" in proc.stdout
    assert "demo: worked as designed" in proc.stdout
    assert "demo: removed " in proc.stdout and "(--keep keeps them)" in proc.stdout
    assert list(tmp_path.glob("eventmesh-demo-*")) == []
    assert dead_letter_files(tmp_path) == []  # the demo never writes into the current directory

    kept = run_cli("demo", "--records", "300", "--keep", cwd=tmp_path, TMPDIR=str(tmp_path))
    assert kept.returncode == 0
    [directory] = tmp_path.glob("eventmesh-demo-*")
    assert ids_in(directory / "dead-letters.jsonl") == ["demo-poison-record"]
    assert f"demo: the failed record is in {directory / 'dead-letters.jsonl'}" in kept.stdout


def test_parse_line_dead_letter_flags() -> None:
    rec = parse_line('{"data": "AAE=", "data_encoding": "base64", "record_id": "x"}', "replay")
    assert rec.data == b"\x00\x01" and rec.record_id == "x"
    with pytest.raises(ValueError, match="base64"):
        parse_line('{"data": "@@@", "data_base64": true}', "send")
    with pytest.raises(ValueError, match="record_id"):
        parse_line('{"data": 1, "record_id": "a\\nb"}', "send")
    with pytest.raises(ValueError, match="record_id is missing"):
        parse_line('{"data": 1}', "replay")
    with pytest.raises(ValueError, match="unknown data_encoding 'rot13'"):
        parse_line('{"data": "x", "data_encoding": "rot13", "record_id": "a"}', "replay")
    assert parse_line('{"data": 1}', "send").data == 1


def test_progress_falls_back_to_plain_lines_without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from eventmesh_http_sink.cli.output import Progress, ProgressState

    for name in ("rich", "rich.console", "rich.progress"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    out = io.StringIO()
    progress = Progress(lambda: ProgressState(3, 2, 1, 0, 0, 0), out, "bar", interval=30).start()
    assert progress.mode == "lines"
    progress.stop()
    assert out.getvalue().startswith("progress: sent 3  ") and "delivered 2  failed 1" in out.getvalue()


def test_on_a_terminal_the_summary_is_a_table_and_the_resend_command_stays_whole(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(5))
    url = f"http://127.0.0.1:{free_port()}/"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*COMMAND, "send", url, str(src), "--retries", "0"],
        stdout=slave,
        stderr=slave,
        cwd=tmp_path,
        env=cli_env(TERM="xterm", COLUMNS="60"),
    )
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 10)
        try:
            data = os.read(master, 65536) if ready else b""
        except OSError:  # the pty closes with the process
            data = b""
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=30)
    os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    assert proc.returncode == 1
    assert "eventmesh-http-sink summary" in screen and "│" in screen  # drawn as a table
    [dead] = dead_letter_files(tmp_path)
    [line] = [line for line in screen.splitlines() if line.startswith("resend them with: ")]
    assert line.endswith(f"replay {dead.name} {url} --retries 0")  # one line, however narrow the table
