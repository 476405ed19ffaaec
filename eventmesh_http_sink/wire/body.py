"""Response bodies: read capped, and decoded by urllib3 the same way on every path.

Both transports keep at most ``max_response_bytes`` of a body and drain up to
:data:`DRAIN_LIMIT` more so the connection can be reused (beyond that it is
closed: an endless stream must not hold a worker). A body with a
``Content-Encoding`` is decoded by urllib3's own ``HTTPResponse`` over the raw
bytes, so ``gzip``, ``deflate`` (and ``br``/``zstd`` where installed) give the
same ``response_body`` as ``urlopen`` would, and a corrupt one fails the same
way (urllib3's ``DecodeError``).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

from urllib3 import HTTPResponse

from eventmesh_http_sink.errors import ReadTimeoutError

__all__ = ["DRAIN_LIMIT", "decode", "read_capped"]

_CHUNK = 64 * 1024
# A body larger than this past ``max_response_bytes`` is not drained: the
# connection is closed instead.
DRAIN_LIMIT = 1024 * 1024


def read_capped(
    read: Callable[[int], bytes], url: str, keep: int, deadline: float | None
) -> tuple[bytes, bool]:
    """Read ``keep`` bytes, then drain up to :data:`DRAIN_LIMIT`.

    Returns the kept bytes and whether the body was read to its end (only then
    may the connection be reused). Raises :class:`ReadTimeoutError` past the
    attempt's deadline, so a server trickling bytes cannot hold a worker.
    """
    kept = bytearray()
    drained = 0
    while True:
        chunk = read(_CHUNK)
        if not chunk:
            return bytes(kept), True
        room = keep - len(kept)
        if room > 0:
            kept += chunk[:room]
        drained += max(0, len(chunk) - max(room, 0))
        if deadline is not None and time.monotonic() > deadline:
            raise ReadTimeoutError(f"attempt_timeout exceeded reading the body from {url}", url=url)
        if drained > DRAIN_LIMIT:
            return bytes(kept), False


def decode(raw: bytes, content_encoding: str, url: str, keep: int) -> bytes:
    """The first ``keep`` bytes of ``raw`` decoded as urllib3 decodes ``content_encoding``.

    Raises:
        urllib3.exceptions.DecodeError: the body does not decode.
    """
    if not raw:
        return b""
    # Only the coding header: the framing is already undone (no chunked, no length).
    response = HTTPResponse(
        body=io.BytesIO(raw),
        headers={"Content-Encoding": content_encoding},
        preload_content=False,
        decode_content=True,
        enforce_content_length=False,
    )
    data, _ = read_capped(response.read1, url, keep, None)
    return data
