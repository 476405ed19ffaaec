"""Dead letters: records whose final outcome was a failure, kept as JSON lines, and their replay.

Each failed record becomes one line::

    {"record_id": "...", "data": ..., "data_encoding": "json" | "text" | "base64",
     "extensions": {...} | null, "timestamp": ... | null, "error_type": "HttpStatusError",
     "error": "HTTP 503 ...", "status": 503 | null, "attempts": 4, "url": "...",
     "failed_at": "2026-01-01T00:00:00.000+00:00"}

``data`` is the record's data as the sink encodes it: the JSON value, the text, or
the bytes in base64.
Headers are never written, so credentials never reach the file.
:func:`replay` sends such a file again through a connector, keeping each
record's ``record_id`` and so its ``Idempotency-Key``.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime
import json
import logging
import os
import threading
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

import attrs

from eventmesh_http_sink.errors import SinkError
from eventmesh_http_sink.records import BYTES_CONTENT_TYPE, JSON_CONTENT_TYPE, ConnectRecord, encode_data

if TYPE_CHECKING:
    from eventmesh_http_sink.connector import HttpSinkConnector

__all__ = ["DeadLetterWriter", "ReplayReport", "dead_letter_entry", "replay"]

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
        "error": str(error),
        "status": error.status,
        "attempts": attempts,
        "url": error.url,
        "failed_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
    }


class DeadLetterWriter:
    """Writes dead-letter entries to a JSON-lines file or hands them to a callable.

    Thread-safe; each line is flushed as it is written and the file is fsynced
    on :meth:`close`. A failing write is logged and counted in ``errors``;
    it never raises into the connector, so no record loses its callback.
    """

    def __init__(self, target: str | os.PathLike[str] | DeadLetterSink) -> None:
        self._path: str | None = None
        self._sink: DeadLetterSink | None = None
        if callable(target):
            self._sink = target
        else:
            self._path = os.fspath(target)
        self._file: IO[str] | None = None
        self._closed = False
        self._lock = threading.Lock()
        self.written = 0
        self.errors = 0

    def write(self, make_entry: Callable[[], dict[str, Any]], record_id: str) -> None:
        """Build and write one entry; never raises (a failure is logged and counted)."""
        try:
            entry = make_entry()
            if self._sink is not None:
                self._sink(entry)
                with self._lock:
                    self.written += 1
                return
            line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
            with self._lock:
                if self._closed:
                    # A record finishing after close(): write it, and leave nothing open.
                    with open(self._path or "", "a", encoding="utf-8") as late:
                        late.write(line)
                        late.flush()
                        os.fsync(late.fileno())
                else:
                    if self._file is None:  # opened at the first failure
                        self._file = open(self._path or "", "a", encoding="utf-8")  # noqa: SIM115
                    self._file.write(line)
                    self._file.flush()
                self.written += 1
        except Exception:
            with self._lock:
                self.errors += 1
            _log.exception("writing the dead letter of record %s failed", record_id)

    def close(self) -> None:
        """Fsync and close the file (a later write appends and fsyncs on its own)."""
        with self._lock:
            self._closed = True
            file, self._file = self._file, None
            if file is None:
                return
            try:
                file.flush()
                os.fsync(file.fileno())
            except OSError:
                self.errors += 1
                _log.exception("fsync of dead-letter file %s failed", self._path)
            finally:
                file.close()


@attrs.frozen
class ReplayReport:
    """What :func:`replay` did.

    Attributes:
        resent: Records put into the connector.
        succeeded: Records delivered this time.
        failed: Records that failed again (or could not be put).
        skipped: ``(line_number, reason)`` of lines that could not be parsed.
        failed_ids: The record ids counted in ``failed``.
    """

    resent: int
    succeeded: int
    failed: int
    skipped: tuple[tuple[int, str], ...] = ()
    failed_ids: tuple[str, ...] = ()


def _record_from(entry: Any) -> ConnectRecord:
    if not isinstance(entry, dict):
        raise ValueError(f"expected a JSON object, got {type(entry).__name__}")
    record_id = entry.get("record_id")
    if not isinstance(record_id, str) or not record_id:
        raise ValueError("record_id is missing")
    if "data" not in entry:
        raise ValueError("data is missing")
    encoding = entry.get("data_encoding", "json")
    data = entry["data"]
    if encoding == "base64":
        if not isinstance(data, str):
            raise ValueError("base64 data must be a string")
        data = base64.b64decode(data, validate=True)
    elif encoding == "text":
        if not isinstance(data, str):
            raise ValueError("text data must be a string")
    elif encoding != "json":
        raise ValueError(f"unknown data_encoding {encoding!r}")
    return ConnectRecord(
        data, extensions=entry.get("extensions"), timestamp=entry.get("timestamp"), record_id=record_id
    )


def replay(
    path: str | os.PathLike[str], connector: HttpSinkConnector, *, timeout: float | None = None
) -> ReplayReport:
    """Send the records of a dead-letter file again through ``connector``.

    Every line is parsed first; a line that cannot be parsed (bad JSON, missing
    fields, bad base64) is logged, reported in ``skipped`` with its line number,
    and does not stop the rest. Records keep their ``record_id``, so receivers
    see the same ``Idempotency-Key``. Records that fail again reach the
    connector's own ``dead_letter`` if it has one: give it another file than
    ``path`` if you want to keep the two apart.

    Args:
        path: The dead-letter file.
        connector: Where to send (started if needed).
        timeout: Seconds to wait for the outcomes; records still pending then count as failed.

    Returns:
        A :class:`ReplayReport`.
    """
    records: list[ConnectRecord] = []
    skipped: list[tuple[int, str]] = []
    with open(os.fspath(path), encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                records.append(_record_from(json.loads(line)))
            except (ValueError, TypeError, SinkError) as exc:  # JSONDecodeError and binascii.Error too
                _log.warning("dead-letter file %s line %d skipped: %s", path, number, exc)
                skipped.append((number, str(exc)))
    futures: dict[concurrent.futures.Future[Any], str] = {}
    for record in records:
        try:
            futures[connector.put(record)] = record.record_id
        except SinkError as exc:
            _log.warning("replay of record %s refused: %s", record.record_id, exc)
    done, _ = concurrent.futures.wait(futures, timeout=timeout)
    delivered = {futures[f] for f in done if f.exception() is None}
    failed_ids = tuple(r.record_id for r in records if r.record_id not in delivered)
    return ReplayReport(
        resent=len(futures),
        succeeded=len(delivered),
        failed=len(failed_ids),
        skipped=tuple(skipped),
        failed_ids=failed_ids,
    )
