"""RQ integration: a ``deliver`` job and a worker that flushes after every job.

RQ's default worker forks a work horse per job, and the horse ends with
``os._exit``: neither ``atexit`` nor the connector's interpreter-exit hook runs
there, so whatever is still queued would be lost. Hence:

* :func:`deliver` puts a batch of record dicts and waits for every outcome
  before it returns: nothing is pending when the horse exits.
* :class:`ConnectorWorker` flushes this process's connector at the end of every
  job, for jobs that ``put`` through :func:`get_connector` themselves.

The worker process must call :func:`configure`, typically from the settings
module given to ``rq worker -c`` (imported by the worker before it forks)::

    # settings.py
    from eventmesh_http_sink import HttpSinkConfig
    from eventmesh_http_sink.rq import configure
    REDIS_URL = "redis://redis-host:6379/0"
    configure(HttpSinkConfig("https://example.com/hook"))

    $ rq worker -c settings -w eventmesh_http_sink.rq.ConnectorWorker sink

Producers enqueue ``Queue("sink").enqueue(deliver, [{"data": ..., "record_id": ...}])``.
Each horse makes its own connector (a fresh pool per job: that is the price of
fork-per-job); ``rq.SimpleWorker``-style workers keep one across jobs, see
:class:`ConnectorSimpleWorker`. RQ's ``SpawnWorker`` starts each horse as a fresh
interpreter that does not import the ``-c`` settings module: call
:func:`configure` from a module the job imports instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rq.worker import SimpleWorker, Worker

from .config import HttpSinkConfig
from .connector import HttpSinkConnector
from .integrations.per_process import ProcessConnector
from .integrations.worker_batch import BatchDeliveryError, BatchSummary, deliver_batch

if TYPE_CHECKING:
    import requests

    from .wire.transport import Transport

__all__ = ["ConnectorSimpleWorker", "ConnectorWorker", "configure", "deliver", "get_connector"]

_log = logging.getLogger("eventmesh_http_sink")
_holder: ProcessConnector | None = None


def configure(
    config: HttpSinkConfig,
    flush_timeout: float = 30.0,
    *,
    transport: Transport | requests.Session | None = None,
) -> None:
    """Set the config this process's connectors are made from.

    Args:
        config: The :class:`HttpSinkConfig`.
        flush_timeout: Seconds the end-of-job flush and the final close wait for
            pending records.
        transport: Passed to each process's :class:`HttpSinkConnector`.

    Raises:
        ConfigError: ``config`` or ``flush_timeout`` is invalid.
    """
    global _holder
    holder = ProcessConnector(config, flush_timeout, transport)  # validates first
    old, _holder = _holder, holder
    if old is not None:
        old.close()


def get_connector() -> HttpSinkConnector:
    """This process's connector (made on first use; a work horse gets its own).

    Raises:
        RuntimeError: :func:`configure` was not called in this process.
    """
    if _holder is None:
        raise RuntimeError(
            "eventmesh_http_sink.rq.configure(config) was not called in this worker"
            " (call it from the settings module given to `rq worker -c`)"
        )
    return _holder.get()


def deliver(records: Sequence[Mapping[str, Any]], raise_on_failure: bool = False) -> BatchSummary:
    """The RQ job: put a batch of record dicts, wait for every outcome, return the summary.

    Args:
        records: Dicts ``{"data", "extensions"?, "record_id"?}``.
        raise_on_failure: Raise :class:`BatchDeliveryError` when any record failed, so
            the job fails (and RQ's ``Retry`` on the job, if set, runs it again).

    Returns:
        ``{"succeeded", "failed", "errors": [...]}``.
    """
    summary, _ = deliver_batch(get_connector(), records)
    if raise_on_failure and summary["failed"]:
        raise BatchDeliveryError(f"{summary['failed']} of {len(records)} records failed", summary)
    return summary


def flush_connector() -> None:
    """Flush this process's connector, if it made one (what the workers call after a job)."""
    if _holder is not None:
        try:
            _holder.flush()
        except Exception:  # a flush problem must not fail the worker itself
            _log.exception("flushing the connector after a job failed")


class _FlushAfterJob:
    """Flushes the process's connector after every job, whatever the job did."""

    def perform_job(self, *args: Any, **kwargs: Any) -> bool:
        try:
            done: bool = super().perform_job(*args, **kwargs)  # type: ignore[misc]
        finally:
            flush_connector()
        return done


class ConnectorWorker(_FlushAfterJob, Worker):
    """An ``rq.Worker`` whose work horse flushes the connector before it exits.

    ``perform_job`` runs in the horse; the flush runs after the job function and
    before the horse's ``os._exit``, so records a job ``put`` are delivered (or
    reported) even if the job did not wait for them.
    """


class ConnectorSimpleWorker(_FlushAfterJob, SimpleWorker):
    """An ``rq.SimpleWorker`` (no fork: one connector kept warm across jobs) that flushes after each job."""

    def teardown(self) -> None:
        try:
            super().teardown()  # type: ignore[no-untyped-call]
        finally:
            if _holder is not None:
                _holder.close()
