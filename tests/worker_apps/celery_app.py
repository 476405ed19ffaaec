"""The Celery app the worker tests run (`celery -A tests.worker_apps.celery_app worker`).

Everything comes from the environment so each test run gets its own queue and
Redis key prefix: EMHS_BROKER_URL, EMHS_PREFIX, EMHS_QUEUE, EMHS_SINK_URL.
"""

from __future__ import annotations

import os

from celery import Celery, signals

from eventmesh_http_sink import ConnectRecord, HttpSinkConfig
from eventmesh_http_sink.celery import get_connector, setup_celery


def make_app(broker_url: str, prefix: str, queue: str) -> Celery:
    app = Celery("emhs_test", broker=broker_url, backend=broker_url)
    app.conf.update(
        broker_transport_options={"global_keyprefix": prefix},
        result_backend_transport_options={"global_keyprefix": prefix},
        task_default_queue=queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # At-least-once across a killed child: ack after the task, requeue if its process dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        result_expires=600,
    )
    return app


app = make_app(
    os.environ.get("EMHS_BROKER_URL", "redis://127.0.0.1:6379/0"),
    os.environ.get("EMHS_PREFIX", "emhs-test:"),
    os.environ.get("EMHS_QUEUE", "emhs-test"),
)

if "EMHS_SINK_URL" in os.environ:
    deliver = setup_celery(
        app,
        HttpSinkConfig(os.environ["EMHS_SINK_URL"], max_workers=8),
        flush_timeout=10,
        flush_after_task=os.environ.get("EMHS_FLUSH_AFTER_TASK", "1") == "1",
    )

    @app.task(name="emhs_test.fire_and_forget")
    def fire_and_forget(keys: list[str]) -> int:
        # Puts and returns without waiting: only the process's exit path can flush these.
        connector = get_connector()
        for key in keys:
            connector.put(ConnectRecord({"key": key}, record_id=key))
        return len(keys)

    @signals.task_prerun.connect
    def _note_pid(task_id: str, **_: object) -> None:
        # Lets a test find (and kill) the process running a given task.
        app.backend.client.set(f"{os.environ['EMHS_PREFIX']}pid:{task_id}", os.getpid(), ex=600)
