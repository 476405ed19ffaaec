"""Celery integration: one connector per worker process and a ready batch task.

::

    app = Celery("sink", broker="redis://...")
    deliver = setup_celery(app, HttpSinkConfig("https://example.com/hook"))
    deliver.delay([{"data": {"id": 1}, "record_id": "order-1"}])

Every worker process (prefork children, or the worker itself with the solo,
threads and gevent pools) gets its own connector on first use, created by
``worker_process_init`` / ``worker_init`` and flushed and closed by
``worker_process_shutdown`` / ``worker_shutdown``. A prefork child leaves through
``os._exit``: the only code that runs on that path is billiard's ``on_exit``
callback, which is what sends ``worker_process_shutdown``; a child killed by a
signal runs nothing. So, by default, the connector is also flushed after every
task (``task_postrun``): between tasks nothing is pending, whatever ends the
process. With ``acks_late`` the message is acknowledged only after that flush.

Pools: prefork (one connector per child), solo and threads (one per worker
process, shared by the pool's threads: the connector is thread-safe), gevent
(one per worker; Celery monkey-patches before importing the app, so the
connector's threads and locks become greenlets and its sockets cooperative;
tested). eventlet relies on the same monkey-patching, so the same model should
apply, but it is not tested here (eventlet is in maintenance mode upstream, which
advises moving off it): prefer gevent. With the threads and gevent pools, the
end-of-task flush waits for every record pending in the process, other tasks'
too; pass ``flush_after_task=False`` if tasks wait for their own records.

Tracing: with ``HttpSinkConfig(tracing=True)`` the records a task puts are traced
under the span current in the task body, so with Celery instrumented for
OpenTelemetry (``opentelemetry-instrumentation-celery``, which makes each task's
span current while it runs) the task's span is the parent of every attempt span
of its records, whichever worker thread sends them. Nothing here needs to know.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .config import HttpSinkConfig
from .connector import HttpSinkConnector
from .integrations.per_process import ProcessConnector
from .integrations.worker_batch import BatchDeliveryError, BatchSummary, deliver_batch

if TYPE_CHECKING:
    import requests

    from .wire.transport import Transport

__all__ = ["TASK_NAME", "get_connector", "setup_celery"]

TASK_NAME = "eventmesh_http_sink.celery.deliver"

_log = logging.getLogger("eventmesh_http_sink")
_holder: ProcessConnector | None = None
_flush_after_task = True


def setup_celery(
    app: Any,
    config: HttpSinkConfig,
    flush_timeout: float = 30.0,
    *,
    transport: Transport | requests.Session | None = None,
    flush_after_task: bool = True,
    task_options: Mapping[str, Any] | None = None,
) -> Any:
    """Give every worker process of ``app`` a connector and register the ``deliver`` task.

    Call it where the app is defined (producers and workers import the same
    module). Calling it again replaces the settings for connectors made afterwards.

    Args:
        app: The ``celery.Celery`` app.
        config: The :class:`HttpSinkConfig` every process's connector uses.
        flush_timeout: Seconds a process waits for its pending records when it
            shuts down (and after each task); records left then are reported
            failed with :class:`SinkClosedError`.
        transport: Passed to each process's :class:`HttpSinkConnector`.
        flush_after_task: Flush the connector after every task, so records that
            tasks ``put`` themselves are never pending when a child is killed or
            recycled between tasks.
        task_options: Extra options for the ``deliver`` task (``acks_late``,
            ``max_retries``, ``default_retry_delay``, ``rate_limit``...).

    Returns:
        The registered ``eventmesh_http_sink.celery.deliver`` task. It takes a list of
        record dicts ``{"data", "extensions"?, "record_id"?}``, puts them all, waits
        for their outcomes and returns ``{"succeeded", "failed", "errors": [...]}``.
        With ``retry_failed=True`` it raises through ``Task.retry`` for the failed
        records only (Celery's retry limits and delays apply), and raises
        :class:`BatchDeliveryError` when retries are exhausted.

    Raises:
        ConfigError: ``config`` or ``flush_timeout`` is invalid.
    """
    from celery import signals

    global _holder, _flush_after_task
    holder = ProcessConnector(config, flush_timeout, transport)  # validates first
    old, _holder, _flush_after_task = _holder, holder, bool(flush_after_task)
    if old is not None:
        old.close()
    # dispatch_uid: connecting twice (a second setup_celery) keeps one receiver each.
    for signal, receiver in (
        (signals.worker_process_init, _open),
        (signals.worker_init, _open),
        (signals.worker_process_shutdown, _close),
        (signals.worker_shutdown, _close),
        (signals.task_postrun, _after_task),
    ):
        signal.connect(receiver, weak=False, dispatch_uid=f"eventmesh_http_sink.{receiver.__name__}")
    options = {"name": TASK_NAME, "bind": True, **(task_options or {})}
    return app.task(**options)(_deliver)


def get_connector() -> HttpSinkConnector:
    """The current process's connector (made on first use).

    Raises:
        RuntimeError: :func:`setup_celery` was not called in this process.
    """
    if _holder is None:
        raise RuntimeError("eventmesh_http_sink.celery.setup_celery(app, config) was not called")
    return _holder.get()


def _open(**_: Any) -> None:
    # Eager, so a misconfiguration shows when the process starts; the connector
    # starts no thread until its first put.
    if _holder is not None:
        _holder.get()


def _close(**_: Any) -> None:
    if _holder is not None:
        try:
            _holder.close()
        except Exception:  # the process is exiting whatever happens here
            _log.exception("closing the worker's connector failed")


def _after_task(**_: Any) -> None:
    if _holder is not None and _flush_after_task:
        _holder.flush()


def _deliver(task: Any, records: Sequence[Mapping[str, Any]], retry_failed: bool = False) -> BatchSummary:
    summary, failed = deliver_batch(get_connector(), records)
    if failed and retry_failed:
        error = BatchDeliveryError(f"{summary['failed']} of {len(records)} records failed", summary)
        # Task.retry raises Retry (or ``error`` once max_retries is reached).
        raise task.retry(args=(failed,), kwargs={"retry_failed": True}, exc=error)
    return summary
