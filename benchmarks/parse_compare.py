"""Per-response cost of reading a response: llhttp (wire/http11.py) against the parser it replaced.

The old parser is loaded from git (``eventmesh_http_sink/wire/fastpath.py`` at
``--old-rev``, default ``0610617``, the last commit that had it), so both run in
one interpreter, alternating, on the same canned responses served from memory
by a socket stand-in (one ``recv`` per response, like a small answer on a
kept-alive connection). Each side does what it did per attempt: the old one
``_read_head`` plus ``_read_body`` / ``_read_chunked``, the new one
:func:`exchange` (request ``sendall`` to the stand-in included, the request
building excluded on both sides). Prints the median microseconds per response
and the new/old ratio (below 1.0: the new one is faster).

    python benchmarks/parse_compare.py [--old-rev REV] [--rounds 7] [--n 20000]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from eventmesh_http_sink.wire.http11 import exchange  # noqa: E402

_JSON = b'{"id":"evt_123","status":"accepted","n":1}'
CANNED = {
    "nginx 200 ok": (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 06:00:00 GMT\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
    ),
    "json 201, 8 headers": (
        b"HTTP/1.1 201 Created\r\nDate: Fri, 27 Nov 2026 06:00:00 GMT\r\nContent-Type: application/json\r\n"
        b"X-Request-Id: 4f1c2a9e-77aa-4a0e-9b7e-3d5b1c0e2f11\r\nCache-Control: no-store\r\nVary: Accept\r\n"
        b"Strict-Transport-Security: max-age=63072000\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n"
        % len(_JSON)
        + _JSON
    ),
    "chunked, 3 chunks": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n1\r\n!\r\n0\r\n\r\n"
    ),
    "64 KiB body": b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n" + b"x" * 65536,
}


class Canned:
    """A socket stand-in answering every request with the same bytes, copying like a kernel would."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = len(data)

    def sendall(self, data: bytes) -> None:
        self.pos = 0

    def recv(self, n: int) -> bytes:
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += len(out)
        return out

    def recv_into(self, buffer: memoryview) -> int:
        n = min(len(buffer), len(self.data) - self.pos)
        buffer[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n

    def settimeout(self, t: float | None) -> None:
        pass

    def gettimeout(self) -> float:
        return 30.0


def load_old(rev: str) -> Any:
    source = subprocess.run(
        ["git", "show", f"{rev}:eventmesh_http_sink/wire/fastpath.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "old_fastpath.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_fastpath", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_old(old: Any, sock: Canned, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        sock.sendall(b"")
        r = old._Reader(sock, "http://x/", None)
        headers = old._read_head(r)[3]
        if headers.get("Transfer-Encoding"):
            old._read_chunked(r, 65536, 1 << 20)
        else:
            old._read_body(r, int(headers["Content-Length"]), 65536, 1 << 20)
    return (time.perf_counter() - t0) / n


def run_new(sock: Canned, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        exchange(
            sock,
            b"",
            url="http://x/",
            head_only=False,
            keep=65536,
            drain_limit=1 << 20,
            read_timeout=30.0,
            deadline=None,
        )
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-rev", default="0610617")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    old = load_old(args.old_rev)
    print(f"{'response':<22} {'old us':>8} {'new us':>8} {'new/old':>8}")
    for name, data in CANNED.items():
        n = args.n if len(data) < 4096 else max(200, args.n // 50)
        olds, news = [], []
        for r in range(args.rounds):  # alternating: neither side always runs first
            if r % 2 == 0:
                olds.append(run_old(old, Canned(data), n))
                news.append(run_new(Canned(data), n))
            else:
                news.append(run_new(Canned(data), n))
                olds.append(run_old(old, Canned(data), n))
        mo, mn = statistics.median(olds) * 1e6, statistics.median(news) * 1e6
        print(f"{name:<22} {mo:>8.2f} {mn:>8.2f} {mn / mo:>8.2f}")


if __name__ == "__main__":
    main()
