"""Running the command line as users do: a fresh ``python -m eventmesh_http_sink`` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMMAND = [sys.executable, "-m", "eventmesh_http_sink"]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("COLUMNS", None)
    env.update(extra)
    return env


def run_cli(
    *args: str, stdin: str | bytes | None = None, timeout: float = 30, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the command to its end in ``cwd`` (where default dead-letter files land)."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run(
        [*COMMAND, *args], input=data, capture_output=True, cwd=cwd, env=cli_env(**env), timeout=timeout
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def start_cli(*args: str, cwd: Path, **popen: Any) -> subprocess.Popen[str]:
    """Start the command; the caller signals it, feeds it, and collects it."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([*COMMAND, *args], text=True, cwd=cwd, env=cli_env(), **popen)


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def summary_of(stdout: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def accounted(s: dict[str, Any]) -> bool:
    """Every line read is in exactly one count."""
    return bool(s["read"] == s["delivered"] + s["failed"] + s["cancelled"] + s["rejected"])


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def records(n: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [{"record_id": f"{prefix}{i}", "data": {"i": i}, "extensions": {"topic": "t"}} for i in range(n)]


def dead_letter_files(where: Path) -> list[Path]:
    return sorted(where.glob("eventmesh-failed-*.jsonl"))


def ids_in(path: Path) -> list[str]:
    return [json.loads(line)["record_id"] for line in path.read_text().splitlines()]


def has_traceback(text: str) -> bool:
    return "Traceback" in text or "Exception ignored" in text
