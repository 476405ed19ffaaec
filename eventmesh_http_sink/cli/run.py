"""One ``send``, ``replay`` or ``demo`` run: read lines, put records, account for every line.

Every non-blank line read ends in exactly one count: delivered, failed,
cancelled or rejected. Failed and cancelled records go to the dead-letter file
(unless ``--no-dead-letter``), which ``replay`` takes as it is, so a run stopped
by Ctrl-C or SIGTERM resumes with the ``replay`` command the summary prints.
"""

from __future__ import annotations

import collections
import io
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs

from eventmesh_http_sink.config import HttpSinkConfig
from eventmesh_http_sink.connector import HttpSinkConnector
from eventmesh_http_sink.errors import InvalidRecordError, QueueFullError, SinkClosedError
from eventmesh_http_sink.metrics import error_kind
from eventmesh_http_sink.outcomes.dead_letter import dead_letter_entry
from eventmesh_http_sink.records import ConnectRecord
from eventmesh_http_sink.results import SendExceptionContext, SendResult

from .lines import Line, LineReader, Mode, Rejects, parse_line
from .output import (
    PROG,
    FailedRecords,
    Progress,
    ProgressState,
    Summary,
    render_summary,
    write_err,
    write_out,
)
from .stopping import StopRequest

__all__ = ["RunSettings", "run"]

# put() waits at most this long for room before the run looks at the stop flag again.
_PUT_WAIT = 0.2
# After close(), callbacks still running on workers get this long to report.
_LAST_OUTCOMES_WAIT = 10.0


@attrs.frozen
class RunSettings:
    """How a run reads, reports and keeps what failed.

    Attributes:
        mode: How lines become records (``send``, ``raw`` or ``replay``).
        strict: Stop at the first rejected line.
        rejects: A file for rejected lines (``None``: stderr).
        quiet: No progress and no summary.
        json: The summary as JSON on stdout.
        progress_interval: Seconds between plain progress lines.
        dead_letter: Where failed and cancelled records go; ``None``: nowhere (``--no-dead-letter``).
        resend: Makes the command that resends a dead-letter file (``None``: show none).
        rest: Makes the advice for input left unread after line N (``None``: show none).
        total: The number of lines, for the progress bar.
        redact: Hides secrets (URL query values) in the error messages the summary shows.
    """

    mode: Mode
    strict: bool = False
    rejects: str | None = None
    quiet: bool = False
    json: bool = False
    progress_interval: float = 5.0
    dead_letter: str | None = None
    resend: Callable[[str], str] | None = None
    rest: Callable[[int, bool], str] | None = None
    total: int | None = None
    redact: Callable[[str], str] = str


class Outcomes:
    """The callback of every record a run puts: counts each outcome, once."""

    def __init__(self, redact: Callable[[str], str] = str) -> None:
        self._redact = redact
        self._done = threading.Condition()
        self.delivered = 0
        self.failed = 0
        self.cancelled = 0
        self.kinds: collections.Counter[str] = collections.Counter()
        self.first_failed = FailedRecords()

    def on_success(self, result: SendResult) -> None:
        with self._done:
            self.delivered += 1
            self._done.notify_all()

    def on_exception(self, context: SendExceptionContext) -> None:
        error = context.error
        with self._done:
            if isinstance(error, SinkClosedError):
                self.cancelled += 1  # stopped before its outcome was known: not a failure
            else:
                self.failed += 1
                self.kinds[error_kind(error)] += 1
            self._done.notify_all()
        if not isinstance(error, SinkClosedError):
            self.first_failed.add(context.record_id, error_kind(error), self._redact(str(error)))

    @property
    def finished(self) -> int:
        """Records with an outcome so far."""
        return self.delivered + self.failed + self.cancelled

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` records have their outcome."""
        with self._done:
            return self._done.wait_for(lambda: self.finished >= count, timeout)


def _progress_mode(settings: RunSettings) -> str:
    if settings.quiet:
        return "off"
    return "bar" if sys.stderr.isatty() else "lines"


def _say(message: str) -> None:
    write_err(f"{PROG}: {message}\n")


class _Run:
    """The state of one run (see :func:`run`)."""

    def __init__(self, settings: RunSettings, connector: HttpSinkConnector, stop: StopRequest) -> None:
        self.settings = settings
        self.connector = connector
        self.stop = stop
        self.outcomes = Outcomes(settings.redact)
        self.rejects = Rejects(settings.rejects, _say)
        self.read = 0
        self.accepted = 0
        self.not_sent: list[ConnectRecord] = []  # read, valid, never put: stopped first
        self.strict_stop = False
        self.announced = False

    def announce_stop(self) -> None:
        if not self.announced:
            self.announced = True
            name = self.stop.name or "stop"
            _say(f"{name}: stopped reading; cancelling what is pending (Ctrl-C again quits at once)")

    def record_of(self, line: Line) -> ConnectRecord | None:
        """The line's record, or ``None`` when the line is rejected."""
        try:
            record = parse_line(line.text(), self.settings.mode)
        except ValueError as exc:
            self.rejects.add(line.number, str(exc), line.shown())
            return None
        record.callback = self.outcomes
        return record

    def put(self, record: ConnectRecord, line: Line) -> bool:
        """Put one record; ``False`` if it was rejected or a stop came while it waited for room."""
        while True:
            try:
                self.connector.put(record)
            except QueueFullError:
                if self.stop.requested:
                    self.not_sent.append(record)
                    return False
                continue
            except InvalidRecordError as exc:
                self.rejects.add(line.number, str(exc), line.shown())
                return False
            self.accepted += 1
            return True

    def feed(self, reader: LineReader) -> None:
        """Put the record of every line until the input ends, a stop, or ``--strict``."""
        for line in reader:
            self.read += 1
            record = self.record_of(line)
            put = record is not None and self.put(record, line)
            if self.stop.requested:
                break
            if not put and self.settings.strict:
                self.strict_stop = True
                return
        if self.stop.requested:
            self.announce_stop()
            self.take_the_rest(reader)

    def take_the_rest(self, reader: LineReader) -> None:
        # Lines already read from the input must not vanish with the run: each becomes a
        # not-sent record for the resume file, or a rejected line.
        lines, partial = reader.drain()
        for line in lines:
            self.read += 1
            record = self.record_of(line)
            if record is not None:
                self.not_sent.append(record)
        if partial.strip() and not reader.rereadable:
            # A pipe: the start of this line is gone from it. Report it (a regular file
            # keeps the line, and the summary says where to resume).
            self.read += 1
            shown = partial.decode("utf-8", "backslashreplace")
            self.rejects.add(
                reader.last_number + 1, "incomplete: the stop came while this line was read", shown
            )

    def wait(self) -> None:
        """Wait for every accepted record's outcome, or a stop; then close the connector."""
        while not self.stop.requested and not self.connector.flush(timeout=_PUT_WAIT):
            pass
        if self.stop.requested:
            self.announce_stop()
            self.connector.close(timeout=0)  # cancels what is left: SinkClosedError, dead-lettered
        else:
            self.connector.close()
        if not self.outcomes.wait_for(self.accepted, _LAST_OUTCOMES_WAIT):
            missing = self.accepted - self.outcomes.finished
            _say(f"{missing} record(s) had no outcome {_LAST_OUTCOMES_WAIT:.0f} s after the connector closed")


def _append_not_sent(path: str, records: list[ConnectRecord], stopped_by: str) -> tuple[int, int]:
    """Append dead-letter lines for records never put; returns (written, errors)."""
    if not records:
        return 0, 0
    error = SinkClosedError(f"not sent: the run was stopped by {stopped_by} before this record was put")
    written = 0
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        _say(f"cannot write {path}: {exc.strerror}")
        return 0, len(records)
    try:
        for record in records:
            line = json.dumps(dead_letter_entry(record, error, 0), ensure_ascii=False, separators=(",", ":"))
            data = (line + "\n").encode("utf-8")
            try:
                while data:  # one write of the whole line, but a short write must not cut it
                    data = data[os.write(fd, data) :]
            except OSError as exc:
                _say(f"cannot write {path}: {exc.strerror}")
                return written, len(records) - written
            written += 1
        os.fsync(fd)
    finally:
        os.close(fd)
    return written, 0


def run(
    settings: RunSettings, config: HttpSinkConfig, open_input: Callable[[threading.Event], LineReader]
) -> int:
    """Deliver the records of the input; print the summary; return the exit code.

    Exit codes: 0 every line delivered; 1 some failed, cancelled or rejected;
    2 ``--strict`` stopped at a rejected line; 128 + N stopped by signal N
    (130 for Ctrl-C, 143 for SIGTERM).
    """
    # The run owns these two: put() must never block past a stop, and records the
    # stop cancels are dead letters (their outcome is unknown, so they are resent).
    config = attrs.evolve(
        config,
        put_timeout=_PUT_WAIT,
        dead_letter=settings.dead_letter,
        dead_letter_on_close=settings.dead_letter is not None,
    )
    t0 = time.monotonic()
    connector = HttpSinkConnector(config)
    with StopRequest() as stop:
        state = _Run(settings, connector, stop)

        def snapshot() -> ProgressState:
            st = connector.stats()
            o = state.outcomes
            return ProgressState(
                st.submitted, o.delivered, o.failed, o.cancelled, st.scheduled_retries, st.in_flight
            )

        progress = Progress(
            snapshot, sys.stderr, _progress_mode(settings), settings.progress_interval, settings.total
        )
        try:
            reader = open_input(stop.event)
            connector.start()
            progress.start()
            state.feed(reader)
            state.wait()
        finally:
            progress.stop()
            state.rejects.close()
            connector.close(timeout=0)  # no-op after wait(); on an error, stops every thread
    elapsed = time.monotonic() - t0
    extra_written, extra_errors = 0, 0
    if settings.dead_letter is not None:
        extra_written, extra_errors = _append_not_sent(settings.dead_letter, state.not_sent, stop.name)
    summary = _summary(state, reader, elapsed, extra_written, extra_errors)
    if settings.json:
        write_out(json.dumps(summary.as_json()) + "\n")
    elif not settings.quiet:
        fancy = sys.stdout.isatty()
        text = io.StringIO()
        render_summary(summary, text, fancy)
        write_out(text.getvalue())
    if stop.requested:
        return stop.exit_code
    if state.strict_stop:
        _say(f"stopped at the first rejected line (--strict), line {reader.last_number}")
        return 2
    return 1 if (summary.failed or summary.cancelled or summary.rejected) else 0


def _summary(
    state: _Run, reader: LineReader, elapsed: float, extra_written: int, extra_errors: int
) -> Summary:
    settings = state.settings
    st = state.connector.stats()
    o = state.outcomes
    cancelled = o.cancelled + len(state.not_sent)
    went: str | None = None
    resend: str | None = None
    dead_lettered: int | None = None
    if settings.dead_letter is not None and (o.failed or cancelled):
        went = settings.dead_letter
        dead_lettered = st.dead_lettered + extra_written
        if settings.resend is not None and dead_lettered:
            resend = settings.resend(settings.dead_letter)
    stopped_by = state.stop.name or ("--strict" if state.strict_stop else None)
    rest = None
    if stopped_by and not reader.at_end and settings.rest is not None:
        rest = settings.rest(reader.last_number, reader.rereadable)
    retries_by_cause: dict[str, Any] = dict(st.retries_by_cause)
    return Summary(
        read=state.read,
        submitted=state.accepted,
        delivered=o.delivered,
        failed=o.failed,
        cancelled=cancelled,
        rejected=state.rejects.count,
        retries=st.retried,
        elapsed=elapsed,
        failures_by_kind=dict(o.kinds),
        retries_by_cause=retries_by_cause,
        latency_p50=st.latency_p50,
        latency_p95=st.latency_p95,
        latency_p99=st.latency_p99,
        failures_went_to=went,
        dead_lettered=dead_lettered,
        dead_letter_errors=st.dead_letter_errors + extra_errors,
        resend_command=resend,
        failed_records=list(o.first_failed.items),
        stopped_by=stopped_by,
        rest_of_input=rest,
    )
