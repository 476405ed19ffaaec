"""Run a function in a forked child (os.fork) and get its JSON answer back: the fork tests' one harness."""

from __future__ import annotations

import json
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest


def run_in_forked_child(target: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Run ``target`` in a forked child; return its JSON answer. A child that hangs is killed and fails."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_fd)
            try:
                payload = {"ok": target()}
            except BaseException as exc:
                payload = {"error": f"{type(exc).__name__}: {exc}"}
            with os.fdopen(write_fd, "w") as out:
                json.dump(payload, out)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    end = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([read_fd], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"the forked child hung for {timeout} s (killed)")
            data = os.read(read_fd, 65536)
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    raw = b"".join(chunks).decode()
    assert os.waitstatus_to_exitcode(status) == 0, raw
    payload = json.loads(raw)
    assert "error" not in payload, payload.get("error")
    return payload["ok"]
