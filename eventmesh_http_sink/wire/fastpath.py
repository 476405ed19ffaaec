"""One plain-HTTP/1.1 attempt straight over a urllib3 pool's connection.

``pool.urlopen`` costs more Python per request than everything else the
connector does together: ``http.client`` parses the response headers with the
``email`` package, builds a buffered file per response, and urllib3 wraps it all
in its own response object. For ``http://`` targets :func:`send_plain` takes a
connection from the same pool (so keep-alive, ``pool_maxsize`` and the dropped
connection check stay urllib3's), writes the request in one ``sendall`` and
parses the response itself: status line, headers, a ``Content-Length`` or
chunked body, or a body that runs to the close.

Kept from the urlopen path: connect timeout, per-read timeout (bounded by the
attempt's deadline), interim 1xx responses skipped, the response body capped at
``keep`` bytes and drained up to ``drain_limit`` (else the connection is
closed), a connection that is not at a clean message boundary is closed before
it goes back to the pool, and errors are mapped like urllib3's. HTTPS keeps
``urlopen`` (its TLS errors need urllib3's classification).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from urllib3 import HTTPHeaderDict
from urllib3.exceptions import ProtocolError

from eventmesh_http_sink.errors import ReadTimeoutError, SinkError

__all__ = ["send_plain"]

_MAX_HEAD = 64 * 1024
_RECV = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})


class _Reader:
    """A receive buffer over one socket, bounded by the attempt's deadline."""

    __slots__ = ("buf", "deadline", "pos", "recv", "url")

    def __init__(self, sock: Any, url: str, deadline: float | None) -> None:
        self.recv = sock.recv
        self.buf = b""
        self.pos = 0
        self.url = url
        self.deadline = deadline

    def more(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise ReadTimeoutError(
                f"attempt_timeout exceeded reading the response from {self.url}", url=self.url
            )
        chunk = self.recv(_RECV)
        if not chunk:
            raise ProtocolError("connection closed mid-response")
        self.buf = self.buf[self.pos :] + chunk
        self.pos = 0

    def until(self, sep: bytes, limit: int) -> bytes:
        while True:
            end = self.buf.find(sep, self.pos)
            if end >= 0:
                data = self.buf[self.pos : end]
                self.pos = end + len(sep)
                return data
            if len(self.buf) - self.pos > limit:
                raise ProtocolError("header line too long")
            self.more()

    def take(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            self.more()
        data = self.buf[self.pos : self.pos + n]
        self.pos += n
        return data

    def bad(self, what: str) -> ProtocolError:
        # Raised as urllib3's own error: the caller maps it (cause attached) like urlopen's.
        return ProtocolError(what[:200])


def _read_head(r: _Reader) -> tuple[int, str, bool, HTTPHeaderDict]:
    head = r.until(b"\r\n\r\n", _MAX_HEAD)
    lines = head.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise r.bad(f"bad status line {lines[0][:100]!r}")
    pairs: list[list[str]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t") and pairs:  # obs-fold: continues the previous value
            pairs[-1][1] = f"{pairs[-1][1]} {line.strip().decode('latin-1')}".strip()
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise r.bad(f"bad header line {line[:100]!r}")
        pairs.append([name.decode("latin-1"), value.strip().decode("latin-1")])
    headers = HTTPHeaderDict()
    for name_text, value_text in pairs:
        headers.add(name_text, value_text)
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    return int(parts[1]), reason, parts[0] == b"HTTP/1.0", headers


def _read_body(r: _Reader, length: int | None, keep: int, drain_limit: int) -> tuple[bytes, bool]:
    """A body of ``length`` bytes (``None``: until close); returns (kept, complete)."""
    if length is not None:
        if length - keep > drain_limit:
            return b"", False  # too much to drain: the connection will be closed
        return r.take(length)[:keep], True
    kept = bytearray(r.buf[r.pos :])
    r.pos = len(r.buf)
    while len(kept) <= keep + drain_limit:
        if r.deadline is not None and time.monotonic() > r.deadline:
            raise ReadTimeoutError(f"attempt_timeout exceeded reading the body from {r.url}", url=r.url)
        chunk = r.recv(_RECV)
        if not chunk:
            return bytes(kept[:keep]), False  # read to the close: never reusable
        kept += chunk
    return bytes(kept[:keep]), False


def _read_chunked(r: _Reader, keep: int, drain_limit: int) -> tuple[bytes, bool]:
    kept = bytearray()
    seen = 0
    while True:
        line = r.until(b"\r\n", 4096)
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise r.bad(f"bad chunk size {line[:50]!r}") from None
        if size < 0:
            raise r.bad("negative chunk size")
        if size == 0:
            while r.until(b"\r\n", 4096):  # trailers, up to the empty line
                pass
            return bytes(kept), True
        seen += size
        if seen > keep + drain_limit:
            return bytes(kept), False
        data = r.take(size)
        if len(kept) < keep:
            kept += data[: keep - len(kept)]
        if r.take(2) != b"\r\n":
            raise r.bad("chunk not followed by CRLF")


def send_plain(  # noqa: PLR0917 - one private call site, mirrors urlopen's arguments
    pool: Any,
    host_header: str,
    method: str,
    path: str,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    connect_timeout: float,
    read_timeout: float,
    deadline: float | None,
    keep: int,
    drain_limit: int,
) -> tuple[int, str, HTTPHeaderDict, bytes]:
    """Make one attempt over a connection of ``pool``; return ``(status, reason, headers, body)``.

    Raises:
        ReadTimeoutError: past the attempt's deadline. Anything else is a urllib3
            or socket exception for the caller to map with ``map_urllib3_error``.
    """
    lines = [f"{method} {path} HTTP/1.1\r\nHost: {host_header}\r\nAccept-Encoding: identity\r\n"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    request = "".join(lines).encode("latin-1") + body

    conn = pool._get_conn()
    reusable = False
    try:
        sock = conn.sock
        if sock is None:
            conn.timeout = connect_timeout
            conn.connect()
            sock = conn.sock
        timeout = read_timeout
        if deadline is not None:
            timeout = max(0.001, min(timeout, deadline - time.monotonic()))
        if sock.gettimeout() != timeout:
            sock.settimeout(timeout)
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            # Like urlopen: a server may answer (413, 401...) and close before reading
            # the whole body; its response is still readable. Else recv fails below.
            pass
        r = _Reader(sock, url, deadline)
        while True:
            status, reason, http10, rheaders = _read_head(r)
            if status >= 200 or status == 101:
                break  # 1xx interim answers (100 Continue, 103) precede the real one
        te = rheaders.get("Transfer-Encoding")
        if method == "HEAD" or status in _NO_BODY_STATUS or status < 200:
            data, complete = b"", True
        elif te is not None:
            if te.lower().strip() != "chunked":
                raise r.bad(f"unsupported Transfer-Encoding {te!r}")
            data, complete = _read_chunked(r, keep, drain_limit)
        else:
            cl = rheaders.get("Content-Length")
            if cl is None:
                length = None
            else:
                values = {v.strip() for v in cl.split(",")}
                if len(values) != 1 or not next(iter(values)).isdigit():
                    raise r.bad(f"bad Content-Length {cl!r}")
                length = int(next(iter(values)))
            data, complete = _read_body(r, length, keep, drain_limit)
        connection = (rheaders.get("Connection") or "").lower()
        reusable = (
            complete
            and r.pos == len(r.buf)  # nothing unexpected after the message
            and "close" not in connection
            and (not http10 or "keep-alive" in connection)
        )
        return status, reason, rheaders, data
    except SinkError:
        raise
    finally:
        if not reusable:
            conn.close()  # a half-read or closing connection must not serve the next request
        pool._put_conn(conn)  # a closed one reconnects on its next use
