"""Batching: many records per request, still one outcome per record.

:class:`BatchConfig` says when a batch is full; :class:`Batcher` accumulates
records per URL and hands a batch to ``send`` when it is full or its
``linger`` has passed (a single timer thread, started with the first record);
:func:`batch_item` and :func:`batch_body` build the request body;
:func:`split_outcomes` turns the ``result_parser``'s answer into per-record
outcomes. The connector does the sending and the retrying.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Generic, Literal, TypeVar

import attrs

from eventmesh_http_sink._validators import callable_, known_options, one_of, optional, positive, positive_int
from eventmesh_http_sink.errors import InvalidRecordError, SinkError

__all__ = ["BatchConfig", "Batcher", "ResultParser", "batch_body", "batch_item", "split_outcomes"]

T = TypeVar("T")

#: ``fn(status, body, records) -> [(ok, error_message_or_None), ...]``, one per record.
ResultParser = Callable[[int, bytes, Sequence[Any]], Sequence[tuple[bool, str | None]]]

_JSON_TYPES = ("application/json", "application/cloudevents+json")


@known_options
@attrs.frozen
class BatchConfig:
    """When records accumulated for one URL go out as one request.

    Args:
        max_records: Send when this many records are waiting.
        max_bytes: Send before the body would grow past this many bytes (a
            single larger record goes alone).
        linger: Send this many seconds after the batch's first record at the latest.
        format: ``"json"`` (a JSON array; the CloudEvents batch format with a
            CloudEvents encoding) or ``"ndjson"`` (one JSON document per line).
        result_parser: ``fn(status, body, records) -> [(ok, error_message), ...]``
            mapping a 2xx response to per-record outcomes; failed records are
            retried on their own. ``None``: the batch's status applies to all.
    """

    _config_prefix: ClassVar[str] = "batch"  # ConfigError names "batch.<field>"

    max_records: int = attrs.field(default=100, validator=positive_int)
    max_bytes: int = attrs.field(default=1_048_576, validator=positive_int)
    linger: float = attrs.field(default=0.05, validator=positive)
    format: Literal["json", "ndjson"] = attrs.field(default="json", validator=one_of("json", "ndjson"))
    result_parser: ResultParser | None = attrs.field(default=None, validator=optional(callable_), eq=False)


def batch_item(record_id: str, body: bytes, content_type: str) -> bytes:
    """One record's element of a batch body: a single-line JSON document.

    Raises:
        InvalidRecordError: binary data that is not UTF-8 text cannot go into a JSON batch.
    """
    if content_type in _JSON_TYPES or content_type.split(";", maxsplit=1)[0].strip() in _JSON_TYPES:
        return body  # our encoders write compact JSON: one line
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRecordError(
            record_id, "binary data cannot go into a JSON batch (use a cloudevents encoding)"
        ) from None
    return json.dumps(text, ensure_ascii=False).encode("utf-8")


def batch_body(items: Sequence[bytes], fmt: str, cloudevents: bool) -> tuple[bytes, str]:
    """Return ``(body, content_type)`` for a batch of :func:`batch_item` elements."""
    if fmt == "ndjson":
        return b"\n".join(items) + b"\n", "application/x-ndjson"
    content_type = "application/cloudevents-batch+json" if cloudevents else "application/json"
    return b"[" + b",".join(items) + b"]", content_type


def batch_key(record_ids: Sequence[str]) -> str:
    """A stable ``Idempotency-Key`` for a batch: the same records give the same key."""
    digest = hashlib.sha256("\n".join(record_ids).encode("ascii")).hexdigest()
    return f"batch-{digest[:32]}"


def split_outcomes(
    parser: ResultParser, status: int, body: bytes, records: Sequence[Any], url: str
) -> list[SinkError | None]:
    """Run the ``result_parser``: ``None`` for a delivered record, else its error.

    A parser that raises or answers with the wrong length fails every record
    with a non-retryable :class:`SinkError` (the batch may have been delivered).
    """
    try:
        outcomes = list(parser(status, body, records))
        if len(outcomes) != len(records):
            raise ValueError(f"returned {len(outcomes)} outcomes for {len(records)} records")
    except BaseException as exc:  # user code, even SystemExit: the records fail, the worker goes on
        err = SinkError(f"result_parser failed for a batch sent to {url}: {exc}", url=url, status=status)
        err.__cause__ = exc
        return [err] * len(records)
    from eventmesh_http_sink.errors import BatchRecordError

    results: list[SinkError | None] = []
    for ok, message in outcomes:
        if ok:
            results.append(None)
        else:
            results.append(
                BatchRecordError(
                    f"rejected inside a batch by {url}: {message or 'no reason given'}",
                    url=url,
                    status=status,
                )
            )
    return results


class _Pending(Generic[T]):
    __slots__ = ("deadline", "items", "size")

    def __init__(self, deadline: float) -> None:
        self.items: list[T] = []
        self.size = 0
        self.deadline = deadline


class Batcher(Generic[T]):
    """Accumulates items per URL; calls ``send(url, items)`` outside its lock.

    Args:
        config: The :class:`BatchConfig`.
        send: Called with a full or lingered batch; must not block for long.
    """

    def __init__(self, config: BatchConfig, send: Callable[[str, list[T]], None]) -> None:
        self._max_records = config.max_records
        self._max_bytes = config.max_bytes
        self._linger = config.linger
        self._send = send
        self._open: dict[str, _Pending[T]] = {}
        # add() takes the bare lock (a C call, where a Condition's ``with`` is two Python
        # calls); the timer thread waits on the Condition built over the same lock.
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stopped = False
        # When the sleeping timer thread wakes up by itself (time.monotonic()); inf: only
        # when notified; 0.0: it is awake and looks at every open batch before it sleeps
        # again. A new batch's deadline wakes it only if it would sleep past it: at
        # thousands of batches a second, one wake-up per linger instead of one per batch.
        self._wakes_at = 0.0

    def add(self, url: str, item: T, size: int) -> bool:
        """Add ``item`` (``size`` body bytes) to ``url``'s batch; ``False`` once stopped."""
        full: list[T] | None = None
        ready: list[T] | None = None
        with self._lock:
            if self._stopped:
                return False
            pending = self._open.get(url)
            if pending is not None and pending.items and pending.size + size + 1 > self._max_bytes:
                full = pending.items  # this record would overflow the batch: send it first
                pending = None
            if pending is None or not pending.items:
                deadline = time.monotonic() + self._linger
                pending = self._open[url] = _Pending(deadline)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="eventmesh-http-sink-batch", daemon=True
                    )
                    self._thread.start()
                elif self._wakes_at > deadline:
                    self._wakes_at = 0.0  # notified: it looks again before it sleeps
                    self._cv.notify()
            items = pending.items
            items.append(item)
            pending.size += size + 1
            if len(items) >= self._max_records or pending.size >= self._max_bytes:
                ready = items
                del self._open[url]
        if full is not None:
            self._send(url, full)
        if ready is not None:
            self._send(url, ready)
        return True

    def drain(self) -> None:
        """Send every partial batch now (``flush`` and ``close``)."""
        with self._cv:
            batches = [(url, p.items) for url, p in self._open.items() if p.items]
            self._open.clear()
        for url, items in batches:
            self._send(url, items)

    def stop(self) -> list[T]:
        """Stop the timer thread; return the items never sent."""
        with self._cv:
            self._stopped = True
            left = [item for p in self._open.values() for item in p.items]
            self._open.clear()
            self._cv.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        return left

    def _run(self) -> None:
        while True:
            due: list[tuple[str, list[T]]] = []
            with self._cv:
                while not self._stopped:
                    now = time.monotonic()
                    due = [(u, p.items) for u, p in self._open.items() if p.deadline <= now]
                    if due:
                        for url, _ in due:
                            del self._open[url]
                        break
                    if self._open:
                        self._wakes_at = min(p.deadline for p in self._open.values())
                        self._cv.wait(self._wakes_at - now)
                    else:
                        self._wakes_at = math.inf
                        self._cv.wait()
                    self._wakes_at = 0.0
                if self._stopped:
                    return
            for url, items in due:  # outside the lock: send may block on the executor briefly
                self._send(url, items)
