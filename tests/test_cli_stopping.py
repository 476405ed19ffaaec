"""Every way out of the command line: real signals and real pipes to a real ``send`` process.

Whatever ends a run (Ctrl-C, SIGTERM, SIGHUP, a reader that went away, a closed
stdout), each line read is counted once, the records not delivered are in the
dead-letter file for ``replay``, and no traceback is printed.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from eventmesh_http_sink.testing import FaultServer, RandomFaults, Reply

from .cli_helpers import (
    COMMAND,
    ROOT,
    accounted,
    cli_env,
    dead_letter_files,
    has_traceback,
    ids_in,
    records,
    run_cli,
    start_cli,
    summary_of,
    wait_until,
    write_jsonl,
)


def test_ctrl_c_cancels_what_is_pending_writes_it_for_replay_and_exits_130(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(3))
    with FaultServer(responder=lambda request: Reply.hang(5)) as hanging:
        proc = start_cli("send", hanging.url, str(src), "--json", cwd=tmp_path)
        wait_until(lambda: len(hanging.keys()) >= 1)  # on the wire (the others queued or on the wire too)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert "SIGINT: stopped reading; cancelling what is pending" in err and not has_traceback(err)
    s = summary_of(out)
    assert (s["read"], s["delivered"], s["failed"], s["cancelled"]) == (3, 0, 0, 3)  # unknown, not failed
    assert s["failures_by_kind"] == {} and s["stopped_by"] == "SIGINT"
    [dead] = dead_letter_files(tmp_path)
    assert sorted(ids_in(dead)) == ["r0", "r1", "r2"]
    assert {json.loads(line)["error_type"] for line in dead.read_text().splitlines()} == {"SinkClosedError"}

    with FaultServer() as back:  # resume: the same records, the same Idempotency-Keys
        again = run_cli("replay", str(dead), back.url, "--json", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert back.delivered_keys() == {"r0", "r1", "r2"}
        assert [b.body for b in sorted(back.requests, key=lambda r: r.key or "")] == [
            b'{"i":0}',
            b'{"i":1}',
            b'{"i":2}',
        ]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_mid_run_accounts_for_every_line_and_the_run_resumes(
    signum: signal.Signals, code: int, tmp_path: Path
) -> None:
    n = 3000
    src = write_jsonl(tmp_path / "in.jsonl", records(n))
    delivered: set[str] = set()
    with FaultServer(responder=RandomFaults(latency=0.004), keep_log=True) as slow:
        proc = start_cli(
            "send", slow.url, str(src), "--json", "--workers", "4", "--max-pending", "200", cwd=tmp_path
        )
        wait_until(lambda: len(slow.keys()) >= 300)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == code, err
        assert not has_traceback(err)
        s = summary_of(out)
        assert accounted(s), s  # read == delivered + failed + cancelled + rejected
        assert 0 < s["delivered"] < n and s["cancelled"] > 0 and s["failed"] == 0
        assert s["stopped_by"] == signum.name
        [dead] = dead_letter_files(tmp_path)
        assert len(ids_in(dead)) == s["cancelled"] == s["dead_lettered"]
        delivered |= slow.delivered_keys()

        # Resume exactly as the summary says: replay the dead letters, then send the unread rest.
        replay = run_cli("replay", str(dead), slow.url, "--json", "--no-dead-letter", cwd=tmp_path)
        assert replay.returncode == 0, replay.stderr
        if s["read"] < n:
            rest = s["rest_of_input"]
            assert rest.startswith(
                f"lines after {s['read']} were not read; send them with: tail -n +{s['read'] + 1} "
            )
            tail_cmd, send_cmd = rest.split("send them with: ", 1)[1].split(" | ")
            tail = subprocess.run(shlex.split(tail_cmd), capture_output=True, check=True)
            send_argv = shlex.split(send_cmd)
            assert send_argv[1:4] == ["-m", "eventmesh_http_sink", "send"]
            resent = subprocess.run(
                [*COMMAND, *send_argv[3:], "--json"],
                input=tail.stdout,
                capture_output=True,
                cwd=tmp_path,
                env=cli_env(),
            )
            assert resent.returncode == 0, resent.stderr
        delivered |= slow.delivered_keys()
    assert delivered == {f"r{i}" for i in range(n)}  # nothing was lost on the way


def test_a_signal_while_waiting_for_input_ends_the_run_at_once(tmp_path: Path) -> None:
    with FaultServer() as server:
        proc = start_cli("send", server.url, "-", "--json", cwd=tmp_path, stdin=subprocess.PIPE)
        assert proc.stdin is not None
        for r in records(5):
            proc.stdin.write(json.dumps(r) + "\n")
        proc.stdin.flush()  # and then the producer says nothing more, but keeps the pipe open
        wait_until(lambda: len(server.delivered_keys()) == 5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)  # stdin still open: the end of the run is not the end of the input
        assert time.monotonic() - t0 < 3  # the read was polled, not stuck until more input
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 143, err
    s = summary_of(out)
    assert (s["read"], s["delivered"], s["cancelled"]) == (5, 5, 0)
    assert s["rest_of_input"] == "standard input after line 5 was not read"
    assert dead_letter_files(tmp_path) == []  # nothing failed or was cancelled: no file


def test_lines_read_from_a_pipe_but_not_yet_sent_go_to_the_resume_file(tmp_path: Path) -> None:
    # One pending record at most, on a server that never answers: the other lines of the
    # chunk read from stdin are read but not sent when Ctrl-C comes. They must not vanish.
    lines = [json.dumps(r) for r in records(200)]
    lines.insert(100, "{broken")
    data = ("\n".join(lines) + "\n").encode()
    with FaultServer(responder=lambda request: Reply.hang(10)) as hanging:
        proc = start_cli(
            "send", hanging.url, "-", "--json", "--max-pending", "1", cwd=tmp_path, stdin=subprocess.PIPE
        )
        assert proc.stdin is not None
        proc.stdin.write(data.decode())
        proc.stdin.flush()
        wait_until(lambda: len(hanging.keys()) == 1)
        time.sleep(0.3)  # put() is now waiting for room
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    s = summary_of(out)
    assert (s["read"], s["delivered"], s["cancelled"], s["rejected"]) == (201, 0, 200, 1) and accounted(s)
    assert "line 101: rejected: invalid JSON" in err
    [dead] = dead_letter_files(tmp_path)
    assert sorted(ids_in(dead)) == sorted(f"r{i}" for i in range(200))
    not_sent = [
        json.loads(line) for line in dead.read_text().splitlines() if json.loads(line)["attempts"] == 0
    ]
    assert len(not_sent) == 199 and "not sent: the run was stopped by SIGINT" in not_sent[0]["error"]


def test_a_reader_that_went_away_ends_the_run_quietly_with_its_exit_code(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(50))
    with FaultServer() as server:
        proc = start_cli("send", server.url, str(src), cwd=tmp_path)
        assert proc.stdout is not None
        proc.stdout.close()  # nobody reads stdout: the summary meets a broken pipe
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err  # everything was delivered
        assert not has_traceback(err), err
        assert len(server.delivered_keys()) == 50


def test_head_minus_one_ends_quietly(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(50))
    with FaultServer() as server:
        script = (
            f'{shlex.join(COMMAND)} send {server.url} {src} | head -1; echo "status=${{PIPESTATUS[0]}}" >&2'
        )
        proc = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path, env=cli_env(), timeout=30
        )
    assert proc.stdout == "summary\n"
    assert "status=0" in proc.stderr and not has_traceback(proc.stderr), proc.stderr


def test_a_closed_stdout_or_stderr_is_no_error(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", records(20))
    with FaultServer() as server:
        for redirect in (">&-", "2>&-", ">&- 2>&-"):
            script = f"{shlex.join(COMMAND)} send {server.url} {src} {redirect}; echo status=$? >&2"
            proc = subprocess.run(
                ["bash", "-c", f"( {script} ) 2>&1"],
                capture_output=True,
                text=True,
                cwd=tmp_path,
                env=cli_env(),
                timeout=30,
            )
            assert "status=0" in proc.stdout, (redirect, proc.stdout)
            assert not has_traceback(proc.stdout) and "isatty" not in proc.stdout, (redirect, proc.stdout)
    assert len(server.delivered_keys()) == 20


def test_receive_whose_reader_went_away_answers_500_and_ends_quietly() -> None:
    receiver = subprocess.Popen(
        [*COMMAND, "receive", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=cli_env(),
    )
    assert receiver.stdout is not None
    url = receiver.stdout.readline().split()[2]
    receiver.stdout.close()
    from eventmesh_http_sink import (
        ConnectRecord,
        HttpSinkConfig,
        HttpSinkConnector,
        HttpStatusError,
        RetryConfig,
    )

    with HttpSinkConnector(HttpSinkConfig(url, retry=RetryConfig(max_retries=0))) as sink:
        error = sink.put(ConnectRecord("hi", record_id="k1")).exception(timeout=10)
    assert isinstance(error, HttpStatusError) and error.status == 500  # not stored, not reset
    _, err = receiver.communicate(timeout=10)
    assert receiver.returncode == 0 and not has_traceback(err), err
    assert "received 1 request(s); 1 could not be written and were answered 500" in err


def test_a_stderr_reader_that_went_away_does_not_stop_the_run(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [*records(30), "not json"])
    with FaultServer() as server:
        proc = start_cli(
            "send", server.url, str(src), "--json", "--progress-interval", "0.01", "-v", cwd=tmp_path
        )
        assert proc.stderr is not None
        proc.stderr.close()  # progress lines, the rejected line's report and logs meet a broken pipe
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1  # the rejected line, nothing else
    s = summary_of(out)
    assert (s["read"], s["delivered"], s["rejected"]) == (31, 30, 1) and accounted(s)
