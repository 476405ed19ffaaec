"""A traced Celery app for tests/test_tracing.py (`celery -A tests.worker_apps.celery_traced_app worker`).

What opentelemetry-instrumentation-celery does, in a few lines and without it: a
span around every task body (started and made current at ``task_prerun``, ended
at ``task_postrun``). The worker's spans go, one JSON line each, to the file named
by EMHS_SPAN_FILE. Broker, prefix, queue and sink URL come from the environment as
in celery_app.py.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import signals
from opentelemetry import context, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from eventmesh_http_sink import HttpSinkConfig
from eventmesh_http_sink.celery import setup_celery
from tests.worker_apps.celery_app import make_app


def span_line(span: ReadableSpan) -> str:
    ctx, parent = span.get_span_context(), span.parent
    return (
        json.dumps(
            {
                "name": span.name,
                "kind": span.kind.name,
                "trace_id": f"{ctx.trace_id:032x}",
                "span_id": f"{ctx.span_id:016x}",
                "parent_id": None if parent is None else f"{parent.span_id:016x}",
                "pid": os.getpid(),
                "attributes": dict(span.attributes or {}),
            }
        )
        + "\n"
    )


provider = TracerProvider()
# Simple (no thread): safe across the prefork pool's fork; line-buffered appends.
_out = open(os.environ["EMHS_SPAN_FILE"], "a", buffering=1)  # noqa: SIM115 - lives as long as the worker
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=_out, formatter=span_line)))
trace.set_tracer_provider(provider)
_tracer = trace.get_tracer("tests.celery_task")
_running: dict[str, tuple[Any, object]] = {}

app = make_app(os.environ["EMHS_BROKER_URL"], os.environ["EMHS_PREFIX"], os.environ["EMHS_QUEUE"])
deliver = setup_celery(app, HttpSinkConfig(os.environ["EMHS_SINK_URL"], max_workers=4, tracing=True))


@signals.task_prerun.connect
def _start_task_span(task_id: str, task: Any, **_: Any) -> None:
    span = _tracer.start_span(f"run/{task.name}", kind=trace.SpanKind.CONSUMER)
    _running[task_id] = (span, context.attach(trace.set_span_in_context(span)))


@signals.task_postrun.connect
def _end_task_span(task_id: str, **_: Any) -> None:
    span, token = _running.pop(task_id)
    context.detach(token)  # type: ignore[arg-type]
    span.end()
