"""Deliver records from Celery workers: any number of workers, on any number of machines.

Every machine runs a worker against the same Redis::

    export EMHS_BROKER_URL=redis://redis-host:6379/0 EMHS_SINK_URL=https://example.com/hook
    celery -A examples.celery_app worker --pool=prefork --concurrency=4 -n sink@%h

Producers (anywhere) enqueue batches::

    python -m examples.celery_app 2000      # 20 tasks of 100 records, then prints the totals
"""

from __future__ import annotations

import os
import sys
import uuid

from celery import Celery

from eventmesh_http_sink import HttpSinkConfig
from eventmesh_http_sink.celery import setup_celery

app = Celery(
    "sink_example",
    broker=os.environ.get("EMHS_BROKER_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("EMHS_BROKER_URL", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    task_default_queue=os.environ.get("EMHS_QUEUE", "sink"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # At least once: acknowledge a task after it ran, and requeue it if its process dies.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
)

# One connector per worker process, flushed and closed when the process exits.
deliver = setup_celery(
    app,
    HttpSinkConfig(os.environ.get("EMHS_SINK_URL", "http://127.0.0.1:8080/"), max_workers=16),
    flush_timeout=30,
    task_options={"max_retries": 5, "default_retry_delay": 10},
)


def produce(total: int, batch_size: int = 100) -> None:
    run = uuid.uuid4().hex[:8]
    records = [{"data": {"n": i}, "record_id": f"{run}-{i}"} for i in range(total)]
    # The record_id is the Idempotency-Key: a redelivered task resends the same keys.
    results = [
        deliver.delay(records[i : i + batch_size], retry_failed=True) for i in range(0, total, batch_size)
    ]
    summaries = [r.get(timeout=300) for r in results]
    ok = sum(s["succeeded"] for s in summaries)
    failed = sum(s["failed"] for s in summaries)
    print(f"{len(results)} tasks: {ok} records delivered, {failed} failed")


if __name__ == "__main__":
    produce(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
