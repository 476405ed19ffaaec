"""A bounded store of attempt outcomes, EventMesh's webhook format.

EventMesh's HTTP sink has a "webhook" mode: it keeps every attempt's outcome
in a bounded queue and serves it over HTTP so other systems can poll what
happened. :class:`ResultStore` is that queue (one entry per attempt, retries
included, the oldest entry dropped when full); :mod:`.export_server` serves it.
URLs and messages are stored redacted (:mod:`eventmesh_http_sink.redact`): the
endpoint has no authentication.
"""

from __future__ import annotations

import collections
import datetime
import itertools
import logging
import os
import threading
from typing import Any, ClassVar, Literal

import attrs

from eventmesh_http_sink import forksafe
from eventmesh_http_sink._validators import field_name, known_options, non_empty_str, positive, positive_int
from eventmesh_http_sink.errors import ConfigError
from eventmesh_http_sink.redact import redact_text, redact_url

__all__ = ["ResultStore", "ResultStoreConfig", "serves_in_this_process"]

_log = logging.getLogger("eventmesh_http_sink")
_MAX_MESSAGE = 256
_MODES = ("peek", "poll")


def _check_port(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(field_name(inst, attr), f"must be None or a port 0..65535, got {value!r}")


def _check_path(inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value.startswith("/") or "?" in value or "#" in value:
        raise ConfigError(
            field_name(inst, attr), f"must be a path starting with '/' (no query), got {value!r}"
        )


@known_options
@attrs.frozen
class ResultStoreConfig:
    """Keep each attempt's outcome and, optionally, serve it over HTTP.

    Args:
        max_size: Entries kept; when full, the oldest entry goes.
        serve_port: ``None`` serves nothing (use :meth:`HttpSinkConnector.export`);
            ``0`` serves on an ephemeral port, ``N`` on port N.
        serve_host: The address the export endpoint binds (loopback by default:
            the entries carry response bodies).
        export_path: The path of the export endpoint.
        idle_timeout: Seconds an endpoint connection may stay quiet (no byte read or
            written, a stalled answer included) before it is closed.
    """

    _config_prefix: ClassVar[str] = "result_store"  # ConfigError names "result_store.<field>"

    max_size: int = attrs.field(default=5000, validator=positive_int)
    serve_port: int | None = attrs.field(default=None, validator=_check_port)
    serve_host: str = attrs.field(default="127.0.0.1", validator=non_empty_str)
    export_path: str = attrs.field(default="/export", validator=_check_path)
    idle_timeout: float = attrs.field(default=10.0, validator=positive)


def _iso_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def check_page(page_num: object, page_size: object, mode: object) -> None:
    """Refuse bad export parameters.

    Raises:
        ValueError: naming the parameter.
    """
    if isinstance(page_num, bool) or not isinstance(page_num, int) or page_num < 1:
        raise ValueError(f"page_num must be an int >= 1, got {page_num!r}")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise ValueError(f"page_size must be an int >= 1, got {page_size!r}")
    if mode not in _MODES:
        raise ValueError(f"mode must be 'peek' or 'poll', got {mode!r}")


class ResultStore:
    """A thread-safe bounded queue of attempt entries, EventMesh's webhook format.

    Each entry is ``{"metadata": {"url", "code", "message", "receivedTime",
    "recordId", "retryNum"}, "data": <response body text or None>}``; ``code``
    is -1 when no response was read. ``url`` and ``message`` are redacted
    (query-string values become ``***``).
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        # (sequence number, entry): the number keeps entries in order when a poll puts some back.
        self._items: collections.deque[tuple[int, dict[str, Any]]] = collections.deque(maxlen=max_size)
        self._seq = itertools.count()
        self._lock = threading.Lock()
        forksafe.register(self)

    def __len__(self) -> int:
        return len(self._items)

    def add_attempt(
        self,
        *,
        url: str,
        record_id: str,
        retry_num: int,
        status: int | None,
        message: str,
        body: bytes | None,
    ) -> None:
        """Append one attempt's outcome (the oldest entry goes when full)."""
        entry = {
            "metadata": {
                "url": redact_url(url),
                "code": -1 if status is None else status,
                "message": redact_text(message[:_MAX_MESSAGE]),
                "receivedTime": _iso_now(),
                "recordId": record_id,
                "retryNum": retry_num,
            },
            "data": None if body is None else body.decode("utf-8", errors="replace"),
        }
        with self._lock:
            self._items.append((next(self._seq), entry))  # deque(maxlen) drops the oldest

    def export(
        self, page_num: int = 1, page_size: int = 10, mode: Literal["peek", "poll"] = "peek"
    ) -> dict[str, Any]:
        """One page of entries, oldest first.

        ``peek`` returns page ``page_num`` and keeps it; ``poll`` removes and
        returns the first ``page_size`` entries (``page_num`` is only echoed),
        as EventMesh does.

        Returns:
            ``{"pageNum": page_num, "pageSize": <items returned>, "pageItems": [...]}``.

        Raises:
            ValueError: a parameter is out of range.
        """
        check_page(page_num, page_size, mode)
        if mode == "poll":
            items = [entry for _, entry in self.take(page_size)]
        else:
            start = (page_num - 1) * page_size
            with self._lock:
                items = [entry for _, entry in itertools.islice(self._items, start, start + page_size)]
        return {"pageNum": page_num, "pageSize": len(items), "pageItems": items}

    def take(self, count: int) -> list[tuple[int, dict[str, Any]]]:
        """Remove and return up to ``count`` oldest entries (:meth:`give_back` them if undelivered)."""
        with self._lock:
            return [self._items.popleft() for _ in range(min(count, len(self._items)))]

    def give_back(self, taken: list[tuple[int, dict[str, Any]]]) -> None:
        """Put entries from :meth:`take` back at their place, oldest first.

        They are older than every entry added since, so they go back to the head;
        if the store filled up meanwhile, the oldest of them go, as they would have.
        """
        with self._lock:
            head = []  # entries another give_back put back that are older than ours
            newest = taken[-1][0] if taken else -1
            while self._items and self._items[0][0] < newest:
                head.append(self._items.popleft())
            merged = sorted(head + taken, key=lambda item: item[0])
            room = self.max_size - len(self._items)
            self._items.extendleft(reversed(merged[max(0, len(merged) - room) :]))

    def after_fork_in_child(self) -> None:
        """A parent thread may have held the lock at the fork: a fresh one for the child.

        The child keeps the entries (``export()`` works there), and from now on a
        fixed ``serve_port`` belongs to the parent (see :func:`serves_in_this_process`).
        """
        forksafe.reinit(self._lock)
        _this_process.forked_from_a_store = os.getpid()
        _this_process.told = False


class _ProcessState:
    """What this process knows about the export port (module state, per process)."""

    forked_from_a_store: int | None = None  # the pid, if forked while a store existed
    told = False  # the "endpoint stays with the parent" line was logged in this process


_this_process = _ProcessState()
_told_lock = forksafe.module_lock()


def serves_in_this_process(config: ResultStoreConfig) -> bool:
    """Whether this process serves ``config``'s export endpoint.

    ``serve_port=None`` serves nothing and ``0`` serves on a port of this process's
    own. A fixed port is not served in a process forked while a result store
    existed (a Celery prefork child, a ``multiprocessing`` fork): every such child
    would bind the port its parent holds, or another child does, and refuse all
    its records with ``Address already in use``. The endpoint stays with the
    parent; the child accepts and delivers records as usual, and its
    :meth:`ResultStore.export` works. Logged once per process.
    """
    if config.serve_port is None:
        return False
    if config.serve_port == 0 or _this_process.forked_from_a_store != os.getpid():
        return True
    with _told_lock:
        told, _this_process.told = _this_process.told, True
    if not told:
        _log.warning(
            "result_store.serve_port=%d is not served in this forked process (pid %d): the export"
            " endpoint stays with the parent process; export() works here, and serve_port=0"
            " gives each process an endpoint of its own",
            config.serve_port,
            os.getpid(),
        )
    return False
