"""The README's examples, run as a newcomer runs them: as scripts, in a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from eventmesh_http_sink.testing import FaultServer

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def run_script(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # Unbuffered, as on a terminal: every write reaches the pipe as it is made, so pieces of
    # lines written by different threads would show up interleaved.
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )


def test_the_first_example_prints_whole_lines_from_16_workers() -> None:
    code = PYTHON_BLOCKS[0]
    assert "max_workers=16" in code and "range(1000)" in code
    with FaultServer(keep_log=False) as server:
        url = server.url + "events?tenant=42"
        code = code.replace("https://hooks.example.com/events?tenant=42", url)
        assert url in code
        proc = run_script(code)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    whole = re.compile(r"delivered [0-9a-f-]{36} 200 after 1 attempt\(s\)|raw bytes: HTTP 200")
    broken = [line for line in lines if not whole.fullmatch(line)]
    assert not broken, f"{len(broken)} of {len(lines)} lines are not whole, e.g. {broken[:3]}"
    assert len(lines) == 1001
    assert lines.count("raw bytes: HTTP 200") == 1
    assert proc.stdout == "1000 delivered, 0 failed\n"


def test_the_receiver_example_sends_and_shows_the_key() -> None:
    [code] = [block for block in PYTHON_BLOCKS if "with FaultServer() as server" in block]
    assert len(code.strip().splitlines()) <= 6  # a receiver in two lines, a record in two more
    proc = run_script(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "['order-1']\n"
