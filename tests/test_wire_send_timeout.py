"""A plain-http send to a peer that reads slowly ends within the attempt's bounds.

SO_SNDTIMEO bounds each send() call, not sendall(): every partial send starts the kernel's
timer again, so a peer that drains a little at a time keeps a <= 16 KiB request going for
many read_timeouts, past attempt_timeout (the deadline is only checked after sendall).
Timeout mode bounds the whole sendall by the wait (min(read_timeout, time left)).
Small buffers on both ends, as in test_wire_timeouts' never-reading peer.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from eventmesh_http_sink.wire.body import DRAIN_LIMIT
from eventmesh_http_sink.wire.http11 import exchange


def test_a_send_to_a_slow_reader_ends_by_the_attempt_deadline() -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    stop = threading.Event()

    def slow_reader() -> None:
        conn, _ = listener.accept()
        with conn:
            while not stop.wait(0.3):  # 2 KiB every 0.3 s: ~2.4 s for the whole request
                if not conn.recv(2048):
                    return

    reader = threading.Thread(target=slow_reader, daemon=True)
    reader.start()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024)
    sock.settimeout(5)
    sock.connect(listener.getsockname())
    started = time.monotonic()
    try:
        with sock, pytest.raises(TimeoutError):  # ReadTimeoutError is a TimeoutError too
            exchange(
                sock,
                b"x" * (16 * 1024),
                url="http://x/",
                head_only=False,
                keep=1000,
                drain_limit=DRAIN_LIMIT,
                read_timeout=0.5,
                deadline=time.monotonic() + 1.0,  # attempt_timeout=1.0
            )
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        listener.close()
        reader.join(5)
    # Generous: timeout mode ends it at 0.5 s; the kernel's per-call timeout took ~6 s here.
    assert elapsed < 2.0, f"the send went on for {elapsed:.1f}s past attempt_timeout=1.0"
