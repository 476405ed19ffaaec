"""Locks a forked child can take: every object that owns one re-creates it itself at fork.

``fork()`` copies a process's memory but only the thread that called it. A lock
that another thread of the parent held at that instant stays held in the child,
and no thread of the child will ever release it: the child's first thread to
take it waits forever (a Celery prefork child that never sends, a worker that
hangs on its first record). ``concurrent.futures.thread`` answers this for its
own lock with ``os.register_at_fork(after_in_child=...)``; this module does the
same for the library's objects, so that no central function has to know (and
reach into) the locks of other objects:

* an object that owns a lock calls :func:`register` with itself once its lock
  exists, and implements :class:`ForkSafe` (``after_fork_in_child``);
* a module-level lock is made with :func:`module_lock`;
* one ``os.register_at_fork`` hook, here, re-creates them all in the child,
  before any of its code runs.

The registry holds its objects weakly: registering never keeps an object alive.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from _thread import LockType

__all__ = ["ForkSafe", "module_lock", "register", "reinit"]

_log = logging.getLogger("eventmesh_http_sink")


class ForkSafe(Protocol):
    """An object that puts its own locks (and thread handles) right in a forked child."""

    def after_fork_in_child(self) -> None:
        """Re-create this object's locks; forget threads that did not survive the fork.

        Runs in the child, right after ``fork()``, while the child has one thread.
        It must not take a lock of another object, nor raise.
        """


_OWNERS: weakref.WeakSet[ForkSafe] = weakref.WeakSet()
_MODULE_LOCKS: list[LockType] = []  # module-level locks live as long as their module: held strongly


def register(owner: ForkSafe) -> None:
    """Have ``owner.after_fork_in_child()`` called in every process forked from this one.

    Call it at the end of ``__init__``, once the locks it re-creates exist.
    """
    _OWNERS.add(owner)


def module_lock() -> LockType:
    """A new lock that is re-created, released, in every process forked from this one."""
    lock = threading.Lock()
    _MODULE_LOCKS.append(lock)
    return lock


def reinit(lock: LockType) -> None:
    """Make ``lock`` released again, in place, in a forked child.

    In place (as ``concurrent.futures.thread`` does), not by assigning a new lock:
    every reference to it, a ``threading.Condition`` built on it included, sees
    the fresh state. ``_at_fork_reinit`` is CPython's own at-fork method for
    locks (3.9+); ``tests/test_fork.py`` fails loudly if a release drops it.
    """
    lock._at_fork_reinit()  # type: ignore[attr-defined]


def _after_fork_in_child() -> None:
    for lock in _MODULE_LOCKS:
        reinit(lock)
    for owner in list(_OWNERS):
        try:
            owner.after_fork_in_child()
        except Exception:  # one broken owner must not leave the others' locks held
            _log.exception("re-creating the locks of %r after fork failed", owner)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
