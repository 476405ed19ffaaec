"""Input of ``send`` and ``replay``: bytes, line by line, each line a record or a rejected line.

Both commands read the same way. Input is read as bytes and split at ``\\n``;
each line is decoded on its own, so one bad byte rejects one line (with its
number), never the lines around it. Reading never blocks past a stop request:
a pipe or terminal is polled, so Ctrl-C or SIGTERM ends a run that waits for
input, and the complete lines already read are handed back (:meth:`LineReader.drain`)
so that none is lost.
"""

from __future__ import annotations

import base64
import binascii
import collections
import json
import os
import select
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Literal

import attrs

from eventmesh_http_sink.errors import InvalidRecordError
from eventmesh_http_sink.records import ConnectRecord

__all__ = ["Line", "LineReader", "Mode", "Rejects", "parse_line"]

Mode = Literal["send", "raw", "replay"]

_CHUNK = 1 << 16
# A line longer than this is rejected, not buffered: a file without newlines (a binary
# file given by mistake) must not be read into memory whole.
MAX_LINE_BYTES = 64 << 20
_POLL = 0.2  # seconds between looks at the stop flag while a pipe has nothing to read


@attrs.frozen
class Line:
    """One input line: its 1-based number and its bytes, without the line ending.

    ``too_long`` lines (over :data:`MAX_LINE_BYTES`) were not kept: ``data`` is empty.
    """

    number: int
    data: bytes
    too_long: bool = False

    def text(self) -> str:
        """The line decoded as UTF-8.

        Raises:
            ValueError: the line is too long, or naming its first byte that is not UTF-8.
        """
        if self.too_long:
            raise ValueError(f"line longer than {MAX_LINE_BYTES >> 20} MiB")
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = self.data[exc.start : exc.start + 1]
            raise ValueError(f"invalid UTF-8 (byte 0x{bad.hex()} at column {exc.start + 1})") from None

    def shown(self) -> str:
        """The line as text for a report, undecodable bytes escaped."""
        return self.data.decode("utf-8", "backslashreplace")


Read = Callable[[], "bytes | None"]  # a chunk, b"" at the end, None when a stop was requested


class LineReader:
    """Splits a byte stream into numbered lines; blank lines are skipped (but numbered).

    Args:
        read: Returns the next chunk, ``b""`` at the end of input, ``None`` when stopped.
        rereadable: The input is a regular file: what was not read is still there.
    """

    def __init__(self, read: Read, rereadable: bool = False) -> None:
        self._read = read
        self.rereadable = rereadable
        self._ready: collections.deque[Line] = collections.deque()  # split, not yet handed out
        self._partial: list[bytes] = []  # the start of the next line
        self._partial_len = 0
        self._skipping = False  # inside a line longer than MAX_LINE_BYTES: drop its bytes
        self._number = 0  # lines split so far
        self._taken = 0  # the last line handed out (or drained)
        self.at_end = False

    @classmethod
    def from_fd(cls, fd: int, stop: threading.Event) -> LineReader:
        """Read a file descriptor; a pipe or terminal is polled so ``stop`` is seen within 0.2 s."""
        regular = stat.S_ISREG(os.fstat(fd).st_mode) or os.name != "posix"

        def read() -> bytes | None:
            while not stop.is_set():
                if regular:
                    return os.read(fd, _CHUNK)
                if select.select([fd], [], [], _POLL)[0] and not stop.is_set():
                    return os.read(fd, _CHUNK)
            return None

        return cls(read, rereadable=stat.S_ISREG(os.fstat(fd).st_mode))

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> LineReader:
        """Read lines made in memory (the demo)."""
        it = iter(lines)

        def read() -> bytes:
            # range first: zip stops on it without taking one more line from `it`.
            return b"".join(line.encode("utf-8") + b"\n" for _, line in zip(range(256), it, strict=False))

        return cls(read)

    @property
    def last_number(self) -> int:
        """The number of the last line handed out or drained: the input after it was not taken."""
        return self._taken

    def __iter__(self) -> Iterator[Line]:
        while True:
            while self._ready:
                line = self._ready.popleft()
                self._taken = line.number
                yield line
            if self.at_end:
                self._taken = self._number  # trailing blank lines
                return
            chunk = self._read()
            if chunk is None:
                return
            if not chunk:
                self.at_end = True
                if self._partial or self._skipping:
                    self._split(b"\n")  # the last line has no newline: it is a line all the same
                continue
            self._split(chunk)

    def _split(self, chunk: bytes) -> None:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            piece = chunk[start:end]
            start = end + 1
            self._number += 1
            if self._skipping:
                self._skipping = False
                self._ready.append(Line(self._number, b"", too_long=True))
                continue
            if self._partial:
                piece = b"".join([*self._partial, piece])
                self._partial.clear()
                self._partial_len = 0
            if len(piece) > MAX_LINE_BYTES:
                self._ready.append(Line(self._number, b"", too_long=True))
                continue
            if self._number == 1 and piece.startswith(b"\xef\xbb\xbf"):
                piece = piece[3:]  # a UTF-8 byte order mark, as some editors write
            piece = piece.removesuffix(b"\r")
            if piece.strip():
                self._ready.append(Line(self._number, piece))
        rest = chunk[start:]
        if rest and not self._skipping:
            self._partial.append(rest)
            self._partial_len += len(rest)
            if self._partial_len > MAX_LINE_BYTES:
                self._partial.clear()
                self._partial_len = 0
                self._skipping = True

    def drain(self) -> tuple[list[Line], bytes]:
        """After a stop: the complete lines read but not handed out, and the start of the next line."""
        lines = list(self._ready)
        self._ready.clear()
        self._taken = self._number
        partial = b"".join(self._partial)
        self._partial.clear()
        return lines, partial


def _decode_data(obj: dict[str, Any]) -> Any:
    # Dead-letter lines carry bytes as base64 with a flag (the dead-letter file writes
    # "data_encoding": "base64"; other spellings are accepted for hand-written files).
    data = obj["data"]
    encoding = obj.get("data_encoding", obj.get("encoding"))
    flagged = obj.get("data_base64") is True or obj.get("base64") is True or encoding == "base64"
    if flagged:
        if not isinstance(data, str):
            raise ValueError("data is flagged base64 but is not a string")
        try:
            return base64.b64decode(data, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"bad base64 data: {exc}") from None
    if encoding == "text" and not isinstance(data, str):
        raise ValueError('data_encoding is "text" but data is not a string')
    if encoding not in (None, "json", "text"):
        raise ValueError(f"unknown data_encoding {encoding!r}")
    return data


def parse_line(text: str, mode: Mode) -> ConnectRecord:
    """Turn one line into a record.

    ``send`` and ``replay`` take ``{"data": ..., "extensions": {...}, "record_id": ...,
    "timestamp": ...}`` (the dead-letter format); ``replay`` needs the ``record_id``,
    which is what makes a resend carry the same ``Idempotency-Key``. ``raw`` takes
    any JSON value, or the text of a line that is not JSON, as the data.

    Raises:
        ValueError: the line is not what ``mode`` accepts (the message says why).
    """
    if mode == "raw":
        try:
            return ConnectRecord(json.loads(text))
        except json.JSONDecodeError:
            return ConnectRecord(text)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict) or "data" not in obj:
        hint = "a dead-letter line" if mode == "replay" else "use --raw-lines to send any JSON"
        raise ValueError(f'expected an object with a "data" key ({hint})')
    data = _decode_data(obj)
    record_id = obj.get("record_id")
    if mode == "replay" and record_id is None:
        raise ValueError("record_id is missing (a dead-letter line has one)")
    kwargs: dict[str, Any] = {} if record_id is None else {"record_id": record_id}
    try:
        return ConnectRecord(data, obj.get("extensions"), timestamp=obj.get("timestamp"), **kwargs)
    except InvalidRecordError as exc:
        raise ValueError(str(exc)) from None


# On stderr only the first rejected lines are shown: a wrong file of a million lines must
# not become a million lines of noise (the summary counts them all; --rejects keeps them all).
SHOWN_REJECTS = 20


class Rejects:
    """Reports rejected input lines with their numbers: as JSON lines to a file, or to stderr
    (the first :data:`SHOWN_REJECTS` of them, then one line saying the rest are only counted)."""

    def __init__(self, path: str | None, stderr: Callable[[str], None]) -> None:
        self.path = path
        self.count = 0
        self._stderr = stderr
        self._file: IO[str] | None = open(path, "w", encoding="utf-8") if path else None  # noqa: SIM115

    def add(self, number: int, reason: str, shown: str) -> None:
        """Report one rejected line."""
        self.count += 1
        if self._file is not None:
            entry = {"line": number, "error": reason, "text": shown}
            self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._file.flush()
        elif self.count <= SHOWN_REJECTS:
            self._stderr(f"line {number}: rejected: {reason}")
        elif self.count == SHOWN_REJECTS + 1:
            self._stderr(
                f"line {number}: rejected; further rejected lines are counted in the summary,"
                " not shown (--rejects FILE keeps each one)"
            )

    def close(self) -> None:
        """Close the rejects file."""
        if self._file is not None:
            self._file.close()
