"""Ctrl-C, SIGTERM and SIGHUP as a request to stop, not an exception.

A ``KeyboardInterrupt`` raised at an arbitrary point of the main thread can land
inside ``put`` or between "accepted" and "counted", and a record would then be in
no count and no file. So while a run is in progress the handlers only set a flag;
the run checks it at safe points (every read, ``put`` and wait is bounded), stops
reading, cancels what is pending, writes it to the resume file and prints the
summary. A second Ctrl-C quits at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["StopRequest"]

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class StopRequest:
    """A context manager that turns the stop signals into :attr:`event` while it is active.

    Handlers can only be installed from the main thread; elsewhere (an embedding
    application's thread) the signals keep their handlers and only :meth:`request`
    sets the flag.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user wants out now
        self.request(signum)

    def request(self, signum: int) -> None:
        """Ask the run to stop, as if ``signum`` had arrived (the first request wins)."""
        if self.signum is None:
            self.signum = signum
        self.event.set()

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.event.is_set()

    @property
    def name(self) -> str:
        """The signal's name (``SIGINT``...), or ``""``."""
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as shells report a process ended by that signal."""
        return 128 + (self.signum or 0)
