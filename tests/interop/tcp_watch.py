"""How many client connections to one server port are open at once, sampled from the kernel.

The servers' logs say which connection carried which request, but not how many
were open at the same moment. :class:`OpenConnections` reads ``/proc/net/tcp``
(every socket of this network namespace) in a background thread and keeps the
largest count of this process's sockets connected to 127.0.0.1 on the server's
port: connecting, established, or closed by the server and not yet by the
client (``CLOSE_WAIT``: a socket the client still holds). A pool that leaked
sockets, or opened more than ``pool_maxsize``, shows here whichever server it
talks to.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType

_TABLE = Path("/proc/net/tcp")
# TCP states (include/net/tcp_states.h): ESTABLISHED, SYN_SENT, CLOSE_WAIT.
_HELD = frozenset({"01", "02", "08"})


def available() -> bool:
    """Whether the kernel table can be read (Linux)."""
    return _TABLE.exists()


def _my_socket_inodes() -> set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


def count_open(port: int) -> int:
    """This process's sockets connected to 127.0.0.1:``port`` and not closed on its side."""
    remote = f"0100007F:{port:04X}"
    mine = _my_socket_inodes()
    n = 0
    with _TABLE.open() as table:
        next(table)  # the column titles
        for line in table:
            # sl, local, remote, state, tx:rx queues, timer, retransmits, uid, timeout, inode, ...
            fields = line.split(None, 10)
            if fields[2] == remote and fields[3] in _HELD and fields[9] in mine:
                n += 1
    return n


class OpenConnections:
    """Samples :func:`count_open` every ``interval`` seconds while in its ``with`` block."""

    def __init__(self, port: int, interval: float = 0.003) -> None:
        self.port = port
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tcp-watch-{port}", daemon=True)

    def sample(self) -> int:
        """Count now (also called by the test at moments that matter, such as after a flush)."""
        n = count_open(self.port)
        self.peak = max(self.peak, n)
        self.samples += 1
        return n

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> OpenConnections:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(5)
