"""Dead letters: records whose final outcome was a failure, kept as JSON lines.

Each failed record becomes one line::

    {"record_id": "...", "data": ..., "data_encoding": "json" | "text" | "base64",
     "extensions": {...} | null, "timestamp": ... | null, "error_type": "HttpStatusError",
     "error": "HTTP 503 ...", "status": 503 | null, "attempts": 4, "url": "...",
     "failed_at": "2026-01-01T00:00:00.000+00:00"}

``data`` is the record's data as the sink encodes it: the JSON value, the text, or
the bytes in base64.
Headers are never written, and the URL and error message go through
:func:`~eventmesh_http_sink.redact.redact_url` / ``redact_text``, so credentials
never reach the file. :func:`~eventmesh_http_sink.outcomes.replay.replay`
sends such a file again.
"""

from __future__ import annotations

import base64
import datetime
import errno
import json
import logging
import os
import stat
import threading
from collections.abc import Callable
from typing import Any

from eventmesh_http_sink.errors import SinkError
from eventmesh_http_sink.records import BYTES_CONTENT_TYPE, JSON_CONTENT_TYPE, ConnectRecord, encode_data
from eventmesh_http_sink.redact import redact_text, redact_url

__all__ = ["DeadLetterWriter", "dead_letter_entry"]

_log = logging.getLogger("eventmesh_http_sink")

DeadLetterSink = Callable[[dict[str, Any]], None]


def dead_letter_entry(record: ConnectRecord, error: SinkError, attempts: int) -> dict[str, Any]:
    """The JSON-ready dead-letter entry of a failed record (no headers, so no secrets).

    ``data`` is the record's own data (before any CloudEvents encoding, compression or
    batching), so :func:`replay` puts back the record that was put.
    """
    body, content_type = encode_data(record)
    if content_type == BYTES_CONTENT_TYPE:
        data: Any = base64.b64encode(body).decode("ascii")
        encoding = "base64"
    elif content_type == JSON_CONTENT_TYPE:
        data = json.loads(body)  # exactly what was sent
        encoding = "json"
    else:
        data = body.decode("utf-8")
        encoding = "text"
    return {
        "record_id": record.record_id,
        "data": data,
        "data_encoding": encoding,
        "extensions": None if record.extensions is None else dict(record.extensions),
        "timestamp": record.timestamp,
        "error_type": type(error).__name__,
        "error": redact_text(str(error)),
        "status": error.status,
        "attempts": attempts,
        "url": None if error.url is None else redact_url(error.url),
        "failed_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
    }


class DeadLetterWriter:
    """Writes dead-letter entries to a JSON-lines file or hands them to a callable.

    Thread-safe, and safe to share between processes (Celery prefork children
    with one path): the file is opened with ``O_APPEND`` and each entry goes out
    as one ``os.write`` of the whole line, so concurrent writers never
    interleave inside a line and no user-space buffer can write half a line
    later. Before each line the writer checks that the file ends with a newline;
    if it does not (a process was killed mid-write, or a write failed half way on
    a full disk) the line starts with one, so the fragment stays a line of its
    own that :func:`replay` skips with its number.

    ``written`` counts entries that are whole in the file (or were accepted by
    the callable); ``errors`` counts entries that are not: a failed write is
    logged and counted, never raised into the connector, so no record loses its
    callback. :meth:`close` fsyncs and never raises.
    """

    def __init__(self, target: str | os.PathLike[str] | DeadLetterSink) -> None:
        self._path: str | None = None
        self._sink: DeadLetterSink | None = None
        if callable(target):
            self._sink = target
        else:
            self._path = os.fspath(target)
        self._fd: int | None = None
        self._torn = False  # a non-regular target (pipe, device) whose last write stopped mid-line
        self._closed = False
        self._failing = 0  # consecutive failures: logged once at ERROR, then at DEBUG
        self._lock = threading.Lock()
        self.written = 0
        self.errors = 0

    def write(self, make_entry: Callable[[], dict[str, Any]], record_id: str) -> None:
        """Build and write one entry; never raises (a failure is logged and counted)."""
        if self._sink is not None:
            try:
                self._sink(make_entry())
            except BaseException as exc:  # user code (even SystemExit) must not stop a worker
                self._count_error(record_id, exc)
                return
            with self._lock:
                self.written += 1
                failed, self._failing = self._failing, 0
        else:
            try:
                line = _encode_line(make_entry())
                with self._lock:
                    self._write_line(line)
                    self.written += 1  # under the lock that wrote it: the count is what the file holds
                    failed, self._failing = self._failing, 0
            except Exception as exc:
                self._count_error(record_id, exc)
                return
        if failed:
            _log.warning(
                "dead-letter writes work again after %d failed (record %s written)", failed, record_id
            )

    def _write_line(self, line: bytes) -> None:
        # Called with the lock held.
        if self._closed:
            # A record finishing after close(): write it, and leave nothing open.
            fd = _open_append(self._path or "")
            try:
                self._append(fd, line)
            finally:
                _fsync(fd, self._path)
                _close(fd)
            return
        if self._fd is None:  # opened at the first failure
            self._fd = _open_append(self._path or "")
        self._append(self._fd, line)

    def _append(self, fd: int, line: bytes) -> None:
        # Called with the lock held: one write of the whole line, after a newline
        # if the file ends inside one.
        if self._tail_is_torn(fd):
            line = b"\n" + line
        done = 0
        try:
            while done < len(line):
                n = os.write(fd, memoryview(line)[done:])
                if n <= 0:  # defensive: a regular file never returns 0 for a non-empty write
                    raise OSError(errno.EIO, "write wrote nothing")
                done += n
        finally:
            if done:  # the file now ends where this write stopped
                self._torn = line[done - 1] != _NEWLINE

    def _tail_is_torn(self, fd: int) -> bool:
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return self._torn  # a pipe or device: only our own writes are known
            if info.st_size == 0 or os.pread(fd, 1, info.st_size - 1) == b"\n":
                return False
        except OSError:
            return self._torn  # opened write-only (no read permission): trust our own writes
        if not self._torn:  # someone else's fragment (ours was logged as a failed write)
            _log.warning(
                "dead-letter file %s ends inside a line (a process stopped mid-write, or a disk"
                " was full): the next entry starts on a new line; replay skips the broken one",
                self._path,
            )
            self._torn = True
        return True

    def _count_error(self, record_id: str, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self._failing += 1
            first = self._failing == 1
        target = self._path if self._sink is None else "the dead_letter callable"
        if first:
            # One ERROR per run of failures (a full disk fails every record): the rest at DEBUG.
            _log.error(
                "writing the dead letter of record %s to %s failed: %s: %s"
                " (counted in dead_letter_errors; further failures are logged at DEBUG)",
                record_id,
                target,
                type(exc).__name__,
                exc,
                exc_info=not isinstance(exc, OSError),
            )
        else:
            _log.debug("writing the dead letter of record %s failed: %s", record_id, exc)

    def close(self) -> None:
        """Fsync and close the file (a later write appends and fsyncs on its own); never raises."""
        with self._lock:
            self._closed = True
            fd, self._fd = self._fd, None
        if fd is not None:
            _fsync(fd, self._path)
            _close(fd)


_NEWLINE = ord("\n")


def _encode_line(entry: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (an extension value): escape everything
        return (json.dumps(entry, separators=(",", ":")) + "\n").encode("ascii")


def _open_append(path: str) -> int:
    flags = os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, os.O_RDWR | flags, 0o666)  # readable too: the tail check preads
    except PermissionError:
        return os.open(path, os.O_WRONLY | flags, 0o666)


def _fsync(fd: int, path: str | None) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:  # EINVAL on a pipe or device; EIO/ENOSPC on a failing disk
        if exc.errno != errno.EINVAL:
            _log.error("fsync of dead-letter file %s failed: %s", path, exc)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError as exc:
        _log.error("closing the dead-letter file failed: %s", exc)
