"""Deliver records from RQ workers: any number of workers, on any number of machines.

Every machine runs workers against the same Redis, with this module as their settings::

    export EMHS_REDIS_URL=redis://redis-host:6379/0 EMHS_SINK_URL=https://example.com/hook
    rq worker -c examples.rq_jobs -w eventmesh_http_sink.rq.ConnectorWorker --with-scheduler sink

(``--with-scheduler`` on at least one worker runs the delayed retries below.)

Producers (anywhere) enqueue batches::

    python -m examples.rq_jobs 2000      # 20 jobs of 100 records, waits, prints the totals
"""

from __future__ import annotations

import os
import sys
import time
import uuid

from eventmesh_http_sink import HttpSinkConfig
from eventmesh_http_sink.rq import configure, deliver

# Read by `rq worker -c examples.rq_jobs`.
REDIS_URL = os.environ.get("EMHS_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("EMHS_QUEUE", "sink")
QUEUES = [QUEUE]

# The worker imports this module before forking: each work horse builds its own connector from it.
configure(HttpSinkConfig(os.environ.get("EMHS_SINK_URL", "http://127.0.0.1:8080/"), max_workers=16))


def produce(total: int, batch_size: int = 100) -> None:
    from redis import Redis
    from rq import Queue, Retry

    queue = Queue(QUEUE, connection=Redis.from_url(REDIS_URL))
    retry = Retry(max=3, interval=[10, 30, 60])  # on top of the connector's own per-record retries
    run = uuid.uuid4().hex[:8]
    records = [{"data": {"n": i}, "record_id": f"{run}-{i}"} for i in range(total)]
    jobs = [
        queue.enqueue(deliver, records[i : i + batch_size], raise_on_failure=True, retry=retry)
        for i in range(0, total, batch_size)
    ]
    deadline = time.monotonic() + 300
    while not all(job.is_finished or job.is_failed for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.5)
    summaries = [job.return_value() for job in jobs if job.is_finished]
    ok = sum(s["succeeded"] for s in summaries)
    print(f"{len(summaries)}/{len(jobs)} jobs finished: {ok} records delivered")


if __name__ == "__main__":
    produce(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
