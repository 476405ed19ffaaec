"""Batches of plain record dicts in, a JSON-able summary out: what worker tasks run (not HTTP batching).

Task queues carry JSON, not :class:`ConnectRecord` objects: a batch is a list of
``{"data": ..., "extensions": {...}, "record_id": "..."}`` dicts. The Celery task
and the RQ job both call :func:`deliver_batch`, which puts every record, waits
for every outcome, and returns a :class:`BatchSummary`.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any, TypedDict

from eventmesh_http_sink.connector import HttpSinkConnector
from eventmesh_http_sink.errors import InvalidRecordError, SinkError
from eventmesh_http_sink.records import ConnectRecord
from eventmesh_http_sink.results import SendResult

__all__ = ["BatchDeliveryError", "BatchSummary", "deliver_batch", "records_from_dicts"]

_KEYS = frozenset({"data", "extensions", "record_id"})


class RecordError(TypedDict):
    """One failed record in a :class:`BatchSummary`."""

    record_id: str
    error: str
    type: str
    status: int | None


class BatchSummary(TypedDict):
    """What a batch task returns (JSON-able, so any result backend stores it)."""

    succeeded: int
    failed: int
    errors: list[RecordError]


class BatchDeliveryError(Exception):
    """Raised by a batch task asked to fail (and so be retried) when records failed.

    ``args`` are ``(message, summary)``, plain JSON, so the error survives any
    Celery result serializer.
    """

    def __init__(self, message: str, summary: BatchSummary) -> None:
        super().__init__(message, summary)
        self.summary = summary


def records_from_dicts(items: Sequence[Mapping[str, Any]]) -> list[ConnectRecord]:
    """Build records from batch dicts, refusing a malformed batch as a whole.

    Raises:
        InvalidRecordError: an item is not a mapping, lacks ``data``, has unknown keys
            (the message names its index), or is an invalid record.
    """
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
        raise InvalidRecordError(None, f"a batch must be a list of record dicts, got {type(items).__name__}")
    records = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InvalidRecordError(None, f"batch item {index} is a {type(item).__name__}, not a dict")
        if "data" not in item:
            raise InvalidRecordError(item.get("record_id"), f"batch item {index} has no 'data'")
        unknown = set(item) - _KEYS
        if unknown:
            raise InvalidRecordError(
                item.get("record_id"), f"batch item {index} has unknown keys {sorted(unknown)}"
            )
        kwargs = {"record_id": item["record_id"]} if item.get("record_id") is not None else {}
        records.append(ConnectRecord(item["data"], item.get("extensions"), **kwargs))
    return records


def deliver_batch(
    connector: HttpSinkConnector, items: Sequence[Mapping[str, Any]], timeout: float | None = None
) -> tuple[BatchSummary, list[Mapping[str, Any]]]:
    """Put every record of a batch and wait for all their outcomes.

    Args:
        connector: The connector to put through.
        items: The record dicts.
        timeout: Seconds to wait for the outcomes; records still pending then are
            counted as failed (they are still delivered or reported by the connector).

    Returns:
        The summary, and the dicts of the failed records (with their ``record_id``)
        for a retry of just those.

    Raises:
        InvalidRecordError: the batch is malformed (nothing was put).
    """
    records = records_from_dicts(items)
    futures: list[tuple[ConnectRecord, Future[SendResult] | SinkError]] = []
    for record in records:
        try:
            futures.append((record, connector.put(record)))
        except SinkError as exc:  # a full queue or a closed connector: this record fails
            futures.append((record, exc))
    concurrent.futures.wait([f for _, f in futures if isinstance(f, Future)], timeout=timeout)
    summary: BatchSummary = {"succeeded": 0, "failed": 0, "errors": []}
    failed: list[Mapping[str, Any]] = []
    for (record, outcome), item in zip(futures, items, strict=True):
        error: BaseException | None
        if isinstance(outcome, SinkError):
            error = outcome
        elif not outcome.done():
            error = TimeoutError(f"no outcome within {timeout}s")
        else:
            error = outcome.exception()
        if error is None:
            summary["succeeded"] += 1
            continue
        summary["failed"] += 1
        summary["errors"].append(
            {
                "record_id": record.record_id,
                "error": str(error),
                "type": type(error).__name__,
                "status": getattr(error, "status", None),
            }
        )
        failed.append({**item, "record_id": record.record_id})
    return summary, failed
