"""What every interop receiver answers, by path (nginx, Node, the ASGI and WSGI apps).

The test cases import the expected bodies from here; the Python apps import
them to answer; ``node_server.js`` and the nginx config spell out the same.
"""

from __future__ import annotations

OK = b"ok"
CHUNKS = (b"first chunk;", b"second chunk;", b"third chunk.")
INTERIM_FINAL = b"final"
REJECTED = b"too large"


def big_body(size: int) -> bytes:
    """``size`` bytes (a multiple of 8), eight a line, each line its own number.

    A prefix of it shows exactly where it came from: a client that skipped or
    repeated bytes would not return ``big_body(size)[:n]``.
    """
    return b"".join(b"%07d\n" % i for i in range(size // 8))
