"""Send a dead-letter file again, streaming: memory bounded by ``max_pending``, not by the file.

:func:`replay` reads the file line by line as bytes, puts each record as soon
as the connector has room for it (at most ``max_pending`` of its records are
in flight at once) and counts each outcome as it arrives, so a file of a
million lines costs what ``max_pending`` records cost. The report is per line:
a ``record_id`` that appears on two lines is two records, each counted as what
it got. A line that cannot be read (not UTF-8, not JSON, a fragment left by a
crash, too long) is skipped with its number and the run goes on.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import threading
import time
from concurrent.futures import Future
from typing import IO, TYPE_CHECKING, Any

import attrs

from eventmesh_http_sink.errors import QueueFullError, SinkClosedError, SinkError
from eventmesh_http_sink.records import ConnectRecord

if TYPE_CHECKING:
    from eventmesh_http_sink.connector import HttpSinkConnector

__all__ = ["ReplayReport", "replay"]

_log = logging.getLogger("eventmesh_http_sink")
_MAX_REASON = 200  # characters of a skip reason kept in the report
_LOGGED_SKIPS = 10  # skipped lines logged at WARNING; the rest at DEBUG, then one summary
_FULL_RETRY = 0.05  # seconds between put attempts when another producer fills the connector
# A dead-letter line holds a record's data JSON-escaped (text up to 6 bytes per byte,
# base64 4/3): a longer line cannot hold a record the connector would accept.
_LINE_FACTOR = 8
_LINE_SLACK = 1 << 20


@attrs.frozen
class ReplayReport:
    """What :func:`replay` did, line by line.

    ``resent == succeeded + failed`` always holds: every line that held a record
    counts once, as what it got.

    Attributes:
        resent: Lines whose record was handed to the connector.
        succeeded: Of those, records delivered this time.
        failed: Of those, records that failed again, were refused by ``put`` or were
            still pending when ``timeout`` passed.
        skipped: ``(line_number, reason)`` of lines that hold no record (not UTF-8,
            not JSON, missing fields, bad base64, a fragment). Blank lines are ignored.
        failed_ids: The record ids counted in ``failed``, in line order (an id appears
            once per line that failed).
        failed_lines: The line numbers counted in ``failed``, in the same order.
        stopped_at_line: The first line not sent because ``timeout`` passed or the
            connector was closed, to resume from; ``None`` when the whole file was read.
    """

    resent: int
    succeeded: int
    failed: int
    skipped: tuple[tuple[int, str], ...] = ()
    failed_ids: tuple[str, ...] = ()
    failed_lines: tuple[int, ...] = ()
    stopped_at_line: int | None = None


def record_from_entry(entry: Any) -> ConnectRecord:
    """The record a dead-letter entry (a parsed JSON line) describes.

    Raises:
        ValueError: the entry is not one (the message says why).
    """
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
        data = base64.b64decode(data, validate=True)  # binascii.Error is a ValueError
    elif encoding == "text":
        if not isinstance(data, str):
            raise ValueError("text data must be a string")
    elif encoding != "json":
        raise ValueError(f"unknown data_encoding {encoding!r}")
    try:
        return ConnectRecord(
            data, extensions=entry.get("extensions"), timestamp=entry.get("timestamp"), record_id=record_id
        )
    except SinkError as exc:  # InvalidRecordError: a bad record_id or extensions
        raise ValueError(str(exc)) from None


class _Tally:
    """The outcomes of one replay, filled by the records' done-callbacks (any thread)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.cond = threading.Condition()
        self.in_flight: dict[int, str] = {}  # line -> record_id, while its outcome is unknown
        self.resent = self.succeeded = 0
        self.failures: list[tuple[int, str]] = []
        self.final = False  # set at the end: late outcomes no longer change the report

    def wait_for_room(self, deadline: float | None) -> bool:
        with self.cond:
            while len(self.in_flight) >= self.window:
                if not self.cond.wait(_remaining(deadline)) and _passed(deadline):
                    return False
        return True

    def wait_for_one(self, deadline: float | None) -> None:
        # The connector is full (shared with other producers): wait for one of ours,
        # or a moment when none of ours is in flight.
        with self.cond:
            count = len(self.in_flight)
            timeout = _FULL_RETRY if count == 0 else _remaining(deadline)
            self.cond.wait_for(lambda: len(self.in_flight) < count or _passed(deadline), timeout)

    def sent(self, line: int, record_id: str) -> None:
        with self.cond:
            self.resent += 1
            self.in_flight[line] = record_id

    def refused(self, line: int, record_id: str) -> None:
        with self.cond:
            self.resent += 1
            self.failures.append((line, record_id))

    def done(self, line: int, future: Future[Any]) -> None:
        ok = future.exception() is None
        with self.cond:
            record_id = self.in_flight.pop(line, None)
            if record_id is not None and not self.final:
                if ok:
                    self.succeeded += 1
                else:
                    self.failures.append((line, record_id))
            self.cond.notify_all()

    def finish(self, deadline: float | None) -> None:
        with self.cond:
            while self.in_flight and not _passed(deadline):
                self.cond.wait(_remaining(deadline))
            self.failures.extend(self.in_flight.items())  # still pending at the deadline
            self.in_flight.clear()
            self.final = True
            self.failures.sort()


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _passed(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _read_line(file: IO[bytes], limit: int) -> tuple[bytes, bool]:
    """The next line (``b""`` at the end) and whether it fit in ``limit`` bytes."""
    raw = file.readline(limit)
    if len(raw) < limit or raw.endswith(b"\n"):
        return raw, True
    while True:  # too long: drop the rest of it without holding it
        rest = file.readline(limit)
        if not rest or rest.endswith(b"\n"):
            return raw[:80], False


def replay(
    path: str | os.PathLike[str], connector: HttpSinkConnector, *, timeout: float | None = None
) -> ReplayReport:
    """Send the records of a dead-letter file again through ``connector``, streaming.

    Lines are read one at a time and put as the connector has room: at most its
    ``max_pending`` records of this file are in flight at once, so memory does
    not grow with the file. A line that holds no record (not UTF-8, not JSON,
    missing fields, bad base64, the fragment a crash left) is reported in
    ``skipped`` with its number and the run goes on. Records keep their
    ``record_id``, so receivers see the same ``Idempotency-Key``. Records that
    fail again reach the connector's own ``dead_letter`` if it has one: give it
    another file than ``path`` to keep the two apart.

    Args:
        path: The dead-letter file.
        connector: Where to send (started if needed).
        timeout: Seconds the whole replay may take: no line is sent after it,
            records still pending then count as failed, and the report says
            where reading stopped (``stopped_at_line``). ``None`` waits for all
            (each record's retry budget bounds the wait).

    Returns:
        A :class:`ReplayReport`.

    Raises:
        OSError: the file cannot be opened.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    tally = _Tally(connector.config.max_pending)
    skipped: list[tuple[int, str]] = []
    stopped_at: int | None = None
    limit = _LINE_FACTOR * connector.config.max_body_bytes + _LINE_SLACK
    with open(os.fspath(path), "rb") as file:
        number = 0
        while True:
            raw, whole = _read_line(file, limit)
            if not raw:
                break
            number += 1
            if not whole:
                _skip(skipped, path, number, f"longer than {limit} bytes: cannot hold a record")
                continue
            if not raw.strip():
                continue
            try:
                record = record_from_entry(json.loads(raw.decode("utf-8")))
            except UnicodeDecodeError as exc:
                _skip(skipped, path, number, f"not valid UTF-8 (byte {exc.start + 1} of the line)")
                continue
            except (ValueError, TypeError, RecursionError) as exc:  # JSONDecodeError, binascii.Error
                _skip(skipped, path, number, str(exc))
                continue
            if not tally.wait_for_room(deadline) or _passed(deadline):
                stopped_at = number
                break
            if not _put(connector, record, number, tally, deadline):
                stopped_at = number
                break
    tally.finish(deadline)
    if len(skipped) > _LOGGED_SKIPS:
        _log.warning("replay of %s skipped %d lines in all (see the report)", path, len(skipped))
    return ReplayReport(
        resent=tally.resent,
        succeeded=tally.succeeded,
        failed=len(tally.failures),
        skipped=tuple(skipped),
        failed_ids=tuple(record_id for _, record_id in tally.failures),
        failed_lines=tuple(line for line, _ in tally.failures),
        stopped_at_line=stopped_at,
    )


def _put(
    connector: HttpSinkConnector, record: ConnectRecord, line: int, tally: _Tally, deadline: float | None
) -> bool:
    """Put one record; ``False`` when the deadline passed or the connector closed before it took it."""
    while True:
        try:
            future = connector.put(record)
        except QueueFullError:  # when_full="raise" or put_timeout, with other producers: wait, retry
            if _passed(deadline):
                return False
            tally.wait_for_one(deadline)
            continue
        except SinkClosedError:  # nothing more will be taken: stop here, say where
            _log.warning("replay: the connector was closed; stopped at line %d", line)
            return False
        except SinkError as exc:  # refused: counts as a failure of this line
            _log.warning("replay: line %d (record %s) refused: %s", line, record.record_id, exc)
            tally.refused(line, record.record_id)
            return True
        tally.sent(line, record.record_id)
        future.add_done_callback(functools.partial(tally.done, line))
        return True


def _skip(skipped: list[tuple[int, str]], path: object, number: int, reason: str) -> None:
    reason = reason[:_MAX_REASON]
    level = logging.WARNING if len(skipped) < _LOGGED_SKIPS else logging.DEBUG
    _log.log(level, "dead-letter file %s line %d skipped: %s", path, number, reason)
    skipped.append((number, reason))
