"""What the command line shows while it sends and when it is done, and where it writes it.

A :class:`Progress` polls a snapshot from its own thread: on a terminal it draws a
live ``rich`` bar (the optional ``[cli]`` extra), and otherwise (no terminal, or no
``rich``) prints a plain line every few seconds. :func:`render_summary` turns the
final numbers into the end-of-run table. :func:`write_out` and :func:`write_err`
write to stdout and stderr and survive a reader that went away (``| head -1``) or
a stream that was closed: the run still ends with its own exit code.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

import attrs

__all__ = [
    "PROG",
    "FailedRecords",
    "Progress",
    "ProgressState",
    "Summary",
    "ensure_std_streams",
    "render_summary",
    "write_err",
    "write_out",
]


PROG = "eventmesh-http-sink"


# -- stdout and stderr that cannot end a run --------------------------------------------------


def ensure_std_streams() -> None:
    """Give a closed stdout or stderr (``>&-``: Python sets it to ``None``) a sink that discards."""
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115


def _write(stream: IO[str], text: str) -> bool:
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):  # BrokenPipeError, EIO, or a closed file
        _discard(stream)
        return False
    return True


def _discard(stream: IO[str]) -> None:
    # Point the descriptor at /dev/null: what is still buffered, and the interpreter's
    # final flush, then go nowhere instead of raising again at exit.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)


def write_out(text: str) -> bool:
    """Write to stdout and flush; ``False`` if nobody reads it any more."""
    return _write(sys.stdout, text)


def write_err(text: str) -> bool:
    """Write to stderr and flush; ``False`` if nobody reads it any more."""
    return _write(sys.stderr, text)


# -- the summary ------------------------------------------------------------------------------


@attrs.frozen
class Summary:
    """The numbers of one ``send``, ``replay`` or ``demo`` run.

    Every non-blank line read is counted once: ``read == delivered + failed +
    cancelled + rejected``. ``cancelled`` records were stopped by Ctrl-C or a
    signal: some may have reached the endpoint (their outcome is unknown), so they
    are written to the dead-letter file with the failures, to be replayed.
    """

    read: int
    submitted: int
    delivered: int
    failed: int
    cancelled: int
    rejected: int
    retries: int
    elapsed: float
    failures_by_kind: dict[str, int]
    retries_by_cause: dict[str, int]
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    failures_went_to: str | None
    dead_lettered: int | None
    dead_letter_errors: int
    resend_command: str | None
    failed_records: list[dict[str, Any]]
    stopped_by: str | None = None
    rest_of_input: str | None = None

    @property
    def rate(self) -> float:
        """Delivered records per second of wall time."""
        return self.delivered / self.elapsed if self.elapsed > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict."""
        out = attrs.asdict(self)
        out["records_per_second"] = round(self.rate, 1)
        return out


class FailedRecords:
    """Keeps the first ``limit`` failed records (id, kind, message) for the summary."""

    def __init__(self, limit: int = 10) -> None:
        self.limit = limit
        self.items: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, record_id: str, kind: str, message: str) -> None:
        """Remember one failure, unless ``limit`` are already kept."""
        with self._lock:
            if len(self.items) < self.limit:
                self.items.append({"record_id": record_id, "error": kind, "message": message[:200]})


def _fmt_latency(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return "inf"
    return f"{seconds * 1000:.1f} ms"


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def summary_rows(s: Summary) -> list[tuple[str, str]]:
    """The summary as ``(label, value)`` rows."""
    rows = [
        ("lines read", str(s.read)),
        ("delivered", str(s.delivered)),
        ("failed", f"{s.failed}" + (f"  ({_fmt_counts(s.failures_by_kind)})" if s.failures_by_kind else "")),
        ("cancelled", f"{s.cancelled}" + ("  (stopped before an outcome: unknown)" if s.cancelled else "")),
        ("rejected lines", str(s.rejected)),
        (
            "retries",
            f"{s.retries}" + (f"  ({_fmt_counts(s.retries_by_cause)})" if s.retries_by_cause else ""),
        ),
        ("elapsed", f"{s.elapsed:.2f} s"),
        ("records/s", f"{s.rate:.1f}  (delivered)"),
        (
            "latency p50/p95/p99",
            " / ".join(_fmt_latency(v) for v in (s.latency_p50, s.latency_p95, s.latency_p99)),
        ),
    ]
    if s.stopped_by:
        rows.append(("stopped by", s.stopped_by))
    if s.failed_records and s.failed > len(s.failed_records):
        rows.append(("failed records", f"the first {len(s.failed_records)} of {s.failed} are listed"))
    if s.failed or s.cancelled:
        if s.failures_went_to is None:
            went = f"this summary only (first {len(s.failed_records)} failed listed; --no-dead-letter)"
        else:
            went = s.failures_went_to
            if s.dead_lettered is not None:
                went += f"  ({s.dead_lettered} written)"
        if s.dead_letter_errors:
            went += f"  ({s.dead_letter_errors} could NOT be written: see the errors above)"
        rows.append(("failures went to", went))
        if s.resend_command:
            rows.append(("resend them with", s.resend_command))
    if s.rest_of_input:
        rows.append(("rest of the input", s.rest_of_input))
    return rows


def failed_record_rows(s: Summary) -> list[tuple[str, str]]:
    """The failed records kept for the summary, one row per distinct error: ``(label, "ids: error")``."""
    groups: dict[tuple[str, str], list[str]] = {}
    for item in s.failed_records:
        groups.setdefault((item["error"], item["message"]), []).append(item["record_id"])
    return [
        ("failed records" if len(ids) > 1 else "failed record", f"{', '.join(ids)}: {kind} {message}")
        for (kind, message), ids in groups.items()
    ]


_COMMAND_ROWS = ("resend them with", "rest of the input")


def render_summary(s: Summary, out: IO[str], fancy: bool) -> None:
    """Write the end-of-run table (a ``rich`` table when ``fancy`` and available)."""
    rows = summary_rows(s)
    if fancy:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            pass
        else:
            # Commands to copy go below the table, whole on one line each.
            commands = [(label, value) for label, value in rows if label in _COMMAND_ROWS]
            table = Table(title="eventmesh-http-sink summary", show_header=False)
            table.add_column(style="bold", no_wrap=True)
            table.add_column(overflow="fold")  # wrapped, never cut
            for label, value in rows:
                if label not in _COMMAND_ROWS:
                    table.add_row(label, value)
            for label, value in failed_record_rows(s):
                table.add_row(f"  {label}", value)
            # `out` may be a buffer written to the terminal later: size and colour for the terminal.
            width = shutil.get_terminal_size().columns
            Console(file=out, force_terminal=True, width=width).print(table)
            out.write("".join(f"{label}: {value}\n" for label, value in commands))
            return
    width = max(len(label) for label, _ in rows)
    lines = ["summary"]
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    lines += [f"  {label} {value}" for label, value in failed_record_rows(s)]
    out.write("\n".join(lines) + "\n")


# -- progress ---------------------------------------------------------------------------------


@attrs.frozen
class ProgressState:
    """What the progress display shows."""

    submitted: int
    delivered: int
    failed: int
    cancelled: int
    retrying: int
    in_flight: int


class Progress:
    """Shows delivery progress until :meth:`stop`.

    Args:
        state: Returns the current :class:`ProgressState`.
        out: Where to draw (stderr).
        mode: ``"bar"`` (live bar on a terminal), ``"lines"`` (periodic lines) or ``"off"``.
        interval: Seconds between plain lines.
        total: The number of records expected, when known.
    """

    def __init__(
        self,
        state: Callable[[], ProgressState],
        out: IO[str],
        mode: str,
        interval: float = 5.0,
        total: int | None = None,
    ) -> None:
        self._state = state
        self._out = out
        self._interval = interval
        self._total = total
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        self.mode = mode
        if mode == "bar":
            try:
                from rich.console import Console
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
            except ImportError:
                self.mode = "lines"
                self._interval = min(interval, 1.0)
            else:
                console = Console(file=out, force_terminal=True)
                self._bar = Progress(
                    TextColumn("[bold]sending"),
                    BarColumn(),
                    TextColumn("{task.fields[line]}"),
                    TimeElapsedColumn(),
                    console=console,
                    refresh_per_second=10,
                    transient=False,
                )
                self._task = self._bar.add_task("send", total=total, line="")

    def start(self) -> Progress:
        """Start drawing."""
        if self.mode == "off":
            return self
        if self._bar is not None:
            self._bar.start()
        self._thread = threading.Thread(target=self._run, name="eventmesh-http-sink-progress", daemon=True)
        self._thread.start()
        return self

    def _line(self, st: ProgressState) -> str:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        line = (
            f"{st.delivered / elapsed:.0f} rec/s  delivered {st.delivered}  failed {st.failed}"
            f"  retrying {st.retrying}  in flight {st.in_flight}"
        )
        return line + (f"  cancelled {st.cancelled}" if st.cancelled else "")

    def _draw(self) -> None:
        st = self._state()
        try:
            if self._bar is not None:
                done = st.delivered + st.failed + st.cancelled
                self._bar.update(self._task, completed=done, line=self._line(st))
            else:
                self._out.write(f"progress: sent {st.submitted}  {self._line(st)}\n")
                self._out.flush()
        except (OSError, ValueError):  # stderr's reader went away: stop drawing, go on sending
            self.mode = "off"

    def _run(self) -> None:
        period = 0.1 if self._bar is not None else self._interval
        while not self._stop.wait(period) and self.mode != "off":
            self._draw()

    def stop(self) -> None:
        """Draw the final state and stop."""
        if self.mode == "off" and self._thread is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.mode != "off":
            self._draw()
        if self._bar is not None:
            with contextlib.suppress(OSError, ValueError):
                self._bar.stop()
