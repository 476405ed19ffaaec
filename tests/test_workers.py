"""Real workers: `celery worker` (prefork, gevent) and `rq worker --burst` against Redis.

Each run uses its own queue names and Redis key prefix (so parallel runs do not
collide) and deletes its keys afterwards; the receiver is a FaultServer in this
process; the workers import this tree's package through PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventmesh_http_sink.celery import TASK_NAME
from eventmesh_http_sink.testing import FaultServer, Reply

pytestmark = [pytest.mark.workers, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parent.parent
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
RECORDS, BATCH = 2000, 100


def _redis():
    redis = pytest.importorskip("redis")
    client = redis.Redis(REDIS_HOST, REDIS_PORT, db=0, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379 (.ci/run starts one)")
    return client


@pytest.fixture
def redis_client() -> Iterator:
    client = _redis()
    yield client
    client.close()


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """Run a worker program; always stop it (TERM, then KILL its process group)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its children too, whatever state they are in
            proc.wait(5)


def _delete_keys(client, pattern: str) -> None:
    keys = list(client.scan_iter(match=pattern, count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


def _batches(prefix: str) -> tuple[list[list[dict]], list[str]]:
    keys = [f"{prefix}-{i}" for i in range(RECORDS)]
    records = [
        {"data": {"n": i, "key": k}, "extensions": {"source": "test"}, "record_id": k}
        for i, k in enumerate(keys)
    ]
    return [records[b : b + BATCH] for b in range(0, RECORDS, BATCH)], keys


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


# -- Celery -------------------------------------------------------------------------------


@contextlib.contextmanager
def _celery_worker(
    server: FaultServer, tmp_path: Path, pool: str, concurrency: int, *extra: str, **env_extra: str
) -> Iterator[tuple]:
    client = _redis()
    run = uuid.uuid4().hex[:10]
    prefix, queue = f"emhs-test-{run}:", f"emhs-test-{run}"
    broker = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
    env = _env(
        EMHS_BROKER_URL=broker, EMHS_PREFIX=prefix, EMHS_QUEUE=queue, EMHS_SINK_URL=server.url, **env_extra
    )
    from tests.worker_apps.celery_app import make_app

    app = make_app(broker, prefix, queue)  # the producer side: same broker, prefix and queue
    args = [sys.executable, "-m", "celery", "-A", "tests.worker_apps.celery_app", "worker"]
    args += [f"--pool={pool}", f"--concurrency={concurrency}", "-Q", queue, "-n", f"{run}@%h"]
    args += ["--without-heartbeat", "--without-gossip", "--without-mingle", "--loglevel=WARNING", *extra]
    log = tmp_path / f"celery-{pool}.log"
    try:
        with _process(args, env, log) as proc:
            yield app, proc, client, prefix, log
    finally:
        with contextlib.suppress(Exception):
            app.close()
        _delete_keys(client, f"{prefix}*")
        _delete_keys(client, f"*{queue}*")
        client.close()


def _run_celery_batches(server: FaultServer, app, log: Path, tag: str) -> None:
    batches, keys = _batches(tag)
    results = [app.send_task(TASK_NAME, args=[batch]) for batch in batches]
    summaries = []
    for result in results:
        try:
            summaries.append(result.get(timeout=60))
        except Exception:
            pytest.fail(f"task {result.id} did not finish: worker log:\n{_log_tail(log)}")
    assert len(summaries) == RECORDS // BATCH
    assert sum(s["succeeded"] for s in summaries) == RECORDS
    assert sum(s["failed"] for s in summaries) == 0
    assert all(s["errors"] == [] for s in summaries)
    missing = set(keys) - server.delivered_keys()
    assert not missing, f"{len(missing)} records never reached the receiver"


def test_celery_prefork_delivers_2000_records_and_survives_a_killed_child(tmp_path):
    held = threading.Event()
    held.set()

    def respond(request):
        # The victim's records are held (in flight) until the test kills its child.
        if request.key and request.key.startswith("victim-") and held.is_set():
            return Reply(200, delay=2.0)
        return Reply(200)

    with FaultServer(responder=respond) as server, _celery_worker(server, tmp_path, "prefork", 2) as ctx:
        app, proc, client, prefix, log = ctx
        _run_celery_batches(server, app, log, "prefork")

        # A child is SIGKILLed while its task's records are on the wire.
        victim_keys = [f"victim-{i}" for i in range(BATCH)]
        batch = [{"data": {"key": k}, "record_id": k} for k in victim_keys]
        result = app.send_task(TASK_NAME, args=[batch])
        deadline = time.monotonic() + 30
        while not any(r.key and r.key.startswith("victim-") for r in list(server.requests)):
            assert time.monotonic() < deadline, f"the victim task never sent: {_log_tail(log)}"
            time.sleep(0.02)
        pid = client.get(f"{prefix}pid:{result.id}")
        assert pid is not None and int(pid) != proc.pid
        killed_at = time.monotonic()
        os.kill(int(pid), signal.SIGKILL)
        held.clear()

        summary = result.get(timeout=60)  # redelivered (acks_late + reject_on_worker_lost) and run again
        assert summary == {"succeeded": BATCH, "failed": 0, "errors": []}
        assert int(client.get(f"{prefix}pid:{result.id}")) != int(pid), (
            "the task did not run in another child"
        )
        after = {
            r.key
            for r in server.requests
            if r.at > killed_at and r.key in set(victim_keys) and r.answered == 200
        }
        assert after == set(victim_keys), (
            "some of the killed task's records were not delivered after redelivery"
        )
        # At least once: the records in flight at the kill were sent twice, under the same key.
        before = {r.key for r in server.requests if r.at < killed_at and r.key in set(victim_keys)}
        assert before
        assert all(server.keys().count(k) == 2 for k in before)
        assert proc.poll() is None, "the worker itself died"


def test_celery_prefork_child_flushes_on_its_exit_path(tmp_path):
    # No end-of-task flush, and a child recycled after every task: what the task put
    # is still pending when billiard's child leaves through os._exit. The
    # worker_process_shutdown hook (billiard's on_exit, the last code before
    # os._exit) must deliver it.
    keys = [f"exit-{i}" for i in range(40)]
    with (
        FaultServer(responder=lambda request: Reply(200, delay=0.5)) as server,
        _celery_worker(
            server, tmp_path, "prefork", 1, "--max-tasks-per-child=1", EMHS_FLUSH_AFTER_TASK="0"
        ) as ctx,
    ):
        app, _, _, _, log = ctx
        assert app.send_task("emhs_test.fire_and_forget", args=[keys]).get(timeout=30) == len(keys)
        deadline = time.monotonic() + 20
        while set(keys) - server.delivered_keys() and time.monotonic() < deadline:
            time.sleep(0.1)
        missing = set(keys) - server.delivered_keys()
        assert not missing, f"{len(missing)} records lost at the child's exit: {_log_tail(log)}"


@pytest.mark.skipif(importlib.util.find_spec("gevent") is None, reason="gevent is not installed")
def test_celery_gevent_pool_delivers_2000_records(tmp_path):
    with FaultServer() as server, _celery_worker(server, tmp_path, "gevent", 20) as ctx:
        app, _, _, _, log = ctx
        _run_celery_batches(server, app, log, "gevent")


# -- RQ -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _rq_queue(client) -> Iterator[tuple]:
    from rq import Queue

    name = f"emhs-test-{uuid.uuid4().hex[:10]}"
    queue = Queue(name, connection=client)
    jobs: list = []
    try:
        yield queue, jobs
    finally:
        for job in jobs:
            with contextlib.suppress(Exception):
                job.delete()
        _delete_keys(client, f"*{name}*")
        client.srem("rq:queues", f"rq:queue:{name}")


def _rq_burst(server: FaultServer, queue_name: str, tmp_path: Path, worker_class: str) -> None:
    env = _env(EMHS_REDIS_URL=f"redis://{REDIS_HOST}:{REDIS_PORT}/0", EMHS_SINK_URL=server.url)
    args = [sys.executable, "-m", "rq.cli", "worker", "--burst", "-c", "tests.worker_apps.rq_settings"]
    args += ["-w", worker_class, "-n", f"{queue_name}-{worker_class.rsplit('.', 1)[-1]}", queue_name]
    log = tmp_path / f"rq-{worker_class}.log"
    with _process(args, env, log) as proc:
        try:
            assert proc.wait(60) == 0, _log_tail(log)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rq worker --burst did not finish: {_log_tail(log)}")


def test_rq_burst_worker_delivers_2000_records(redis_client, tmp_path):
    from eventmesh_http_sink.rq import deliver

    batches, keys = _batches("rq")
    with FaultServer() as server, _rq_queue(redis_client) as (queue, jobs):
        jobs += [queue.enqueue(deliver, batch) for batch in batches]
        _rq_burst(server, queue.name, tmp_path, "eventmesh_http_sink.rq.ConnectorWorker")
        summaries = [job.return_value(refresh=True) for job in jobs]
        assert all(s is not None for s in summaries), [job.get_status() for job in jobs]
        assert sum(s["succeeded"] for s in summaries) == RECORDS
        assert sum(s["failed"] for s in summaries) == 0
        missing = set(keys) - server.delivered_keys()
        assert not missing, f"{len(missing)} records never reached the receiver"


@pytest.mark.parametrize(
    ("worker_class", "all_delivered"),
    [("eventmesh_http_sink.rq.ConnectorWorker", True), ("rq.Worker", False)],
)
def test_rq_connector_worker_flushes_what_jobs_put(redis_client, tmp_path, worker_class, all_delivered):
    # The job puts records and returns at once; the horse then calls os._exit.
    # ConnectorWorker flushes first; the plain rq.Worker loses what is still queued.
    from tests.worker_apps.rq_jobs import fire_and_forget

    keys = [f"ff-{i}" for i in range(40)]
    with (
        FaultServer(responder=lambda request: Reply(200, delay=0.5)) as server,
        _rq_queue(redis_client) as (
            queue,
            jobs,
        ),
    ):
        jobs.append(queue.enqueue(fire_and_forget, keys))
        _rq_burst(server, queue.name, tmp_path, worker_class)
        assert jobs[0].return_value(refresh=True) == len(keys)
        delivered = set(keys) & server.delivered_keys()
        if all_delivered:
            assert delivered == set(keys)
        else:
            assert len(delivered) < len(keys)
