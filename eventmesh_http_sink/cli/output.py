"""What the command line shows while it sends and when it is done.

A :class:`Progress` polls :meth:`HttpSinkConnector.stats` from its own thread:
on a terminal it draws a live ``rich`` bar (the optional ``[cli]`` extra), and
otherwise (no terminal, or no ``rich``) prints a plain line every few seconds.
:func:`render_summary` turns the final numbers into the end-of-run table.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import IO, Any

import attrs

from eventmesh_http_sink.connector import SinkStats

__all__ = ["FailureLog", "Progress", "Summary", "render_summary"]


@attrs.frozen
class Summary:
    """The numbers of one ``send``, ``replay`` or ``demo`` run."""

    read: int
    submitted: int
    succeeded: int
    failed: int
    rejected: int
    retries: int
    elapsed: float
    failures_by_kind: dict[str, int]
    retries_by_cause: dict[str, int]
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    failures_went_to: str
    failed_records: list[dict[str, Any]]

    @property
    def rate(self) -> float:
        """Finished records per second of wall time."""
        done = self.succeeded + self.failed
        return done / self.elapsed if self.elapsed > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict."""
        out = attrs.asdict(self)
        out["records_per_second"] = round(self.rate, 1)
        return out


class FailureLog:
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
        ("records sent", str(s.submitted)),
        ("succeeded", str(s.succeeded)),
        ("failed", f"{s.failed}" + (f"  ({_fmt_counts(s.failures_by_kind)})" if s.failures_by_kind else "")),
        (
            "retries",
            f"{s.retries}" + (f"  ({_fmt_counts(s.retries_by_cause)})" if s.retries_by_cause else ""),
        ),
        ("rejected lines", str(s.rejected)),
        ("elapsed", f"{s.elapsed:.2f} s"),
        ("records/s", f"{s.rate:.1f}"),
        (
            "latency p50/p95/p99",
            " / ".join(_fmt_latency(v) for v in (s.latency_p50, s.latency_p95, s.latency_p99)),
        ),
    ]
    if s.failed:
        rows.append(("failures went to", s.failures_went_to))
    return rows


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
            table = Table(title="eventmesh-http-sink summary", show_header=False)
            table.add_column(style="bold")
            table.add_column()
            for label, value in rows:
                table.add_row(label, value)
            for item in s.failed_records:
                table.add_row("  failed record", f"{item['record_id']}: {item['error']} {item['message']}")
            Console(file=out).print(table)
            return
    width = max(len(label) for label, _ in rows)
    out.write("summary\n")
    for label, value in rows:
        out.write(f"  {label:<{width}}  {value}\n")
    for item in s.failed_records:
        out.write(f"  failed record {item['record_id']}: {item['error']} {item['message']}\n")
    out.flush()


class Progress:
    """Shows delivery progress until :meth:`stop`.

    Args:
        stats: Returns the connector's current :class:`SinkStats`.
        out: Where to draw (stderr).
        mode: ``"bar"`` (live bar on a terminal), ``"lines"`` (periodic lines) or ``"off"``.
        interval: Seconds between plain lines.
        total: The number of records expected, when known.
    """

    def __init__(
        self,
        stats: Callable[[], SinkStats],
        out: IO[str],
        mode: str,
        interval: float = 5.0,
        total: int | None = None,
    ) -> None:
        self._stats = stats
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

    def _line(self, st: SinkStats) -> str:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        done = st.succeeded + st.failed
        return (
            f"{done / elapsed:.0f} rec/s  succeeded {st.succeeded}  failed {st.failed}"
            f"  retrying {st.scheduled_retries}  in flight {st.in_flight}"
        )

    def _draw(self) -> None:
        st = self._stats()
        if self._bar is not None:
            self._bar.update(self._task, completed=st.succeeded + st.failed, line=self._line(st))
        else:
            self._out.write(f"progress: sent {st.submitted}  {self._line(st)}\n")
            self._out.flush()

    def _run(self) -> None:
        period = 0.1 if self._bar is not None else self._interval
        while not self._stop.wait(period):
            self._draw()

    def stop(self) -> None:
        """Draw the final state and stop."""
        if self.mode == "off":
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._draw()
        if self._bar is not None:
            self._bar.stop()
