"""The Celery and RQ integrations in-process: batch dicts, summaries, retries, signals."""

from __future__ import annotations

import json
import os

import pytest

from eventmesh_http_sink import ConfigError, HttpSinkConfig, InvalidRecordError, SinkClosedError
from eventmesh_http_sink.integrations.per_process import ProcessConnector
from eventmesh_http_sink.integrations.worker_batch import (
    BatchDeliveryError,
    deliver_batch,
    records_from_dicts,
)
from eventmesh_http_sink.testing import Reply

celery = pytest.importorskip("celery")
ecelery = pytest.importorskip("eventmesh_http_sink.celery")
erq = pytest.importorskip("eventmesh_http_sink.rq")


@pytest.fixture
def celery_app():
    app = celery.Celery("emhs-unit", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = False  # so eager apply() runs Task.retry like a worker
    yield app
    ecelery._close()
    ecelery._holder = None
    app.close()


@pytest.fixture
def rq_configured(server):
    erq.configure(HttpSinkConfig(server.url, max_workers=4), flush_timeout=5)
    yield
    if erq._holder is not None:
        erq._holder.close()
    erq._holder = None


# -- batch dicts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ({"data": 1}, "must be a list"),
        ("abc", "must be a list"),
        ([{"data": 1}, 5], "batch item 1 is a int"),
        ([{"record_id": "r1"}], "batch item 0 has no 'data'"),
        ([{"data": 1, "extension": {}}], "unknown keys ['extension']"),
        ([{"data": 1, "record_id": "bad\nid"}], "record_id"),
    ],
)
def test_malformed_batches_are_refused_naming_the_item(items, message):
    with pytest.raises(InvalidRecordError) as info:
        records_from_dicts(items)
    assert message in str(info.value)


def test_batch_keeps_data_extensions_and_record_id(server, connector_factory):
    sink = connector_factory(server.url)
    items = [{"data": {"n": 1}, "extensions": {"source": "s"}, "record_id": "k1"}, {"data": "text"}]
    summary, failed = deliver_batch(sink, items)
    assert summary == {"succeeded": 2, "failed": 0, "errors": []}
    assert failed == []
    first = next(r for r in server.requests if r.key == "k1")
    assert json.loads(first.body) == {"n": 1}
    assert json.loads(first.headers["extension"]) == {"source": "s"}
    assert len(server.delivered_keys()) == 2  # the second got a generated id


def test_batch_summary_reports_failures_with_ids_and_status(server, connector_factory):
    server.plan("bad", Reply(400, body=b"no"))
    sink = connector_factory(server.url)
    summary, failed = deliver_batch(sink, [{"data": 1, "record_id": "ok"}, {"data": 2, "record_id": "bad"}])
    assert summary["succeeded"] == 1
    assert summary["failed"] == 1
    [error] = summary["errors"]
    assert error["record_id"] == "bad"
    assert error["status"] == 400
    assert error["type"] == "HttpStatusError"
    assert failed == [{"data": 2, "record_id": "bad"}]
    json.dumps(summary)  # any result backend can store it


def test_batch_on_a_closed_connector_fails_every_record(server, connector_factory):
    sink = connector_factory(server.url)
    sink.close()
    summary, failed = deliver_batch(sink, [{"data": 1, "record_id": "a"}])
    assert summary["failed"] == 1
    assert summary["errors"][0]["type"] == SinkClosedError.__name__
    assert [f["record_id"] for f in failed] == ["a"]


def test_batch_timeout_counts_pending_records_as_failed(server, connector_factory):
    server.responder = lambda request: Reply(200, delay=0.5)
    sink = connector_factory(server.url)
    summary, _ = deliver_batch(sink, [{"data": 1, "record_id": "slow"}], timeout=0.05)
    assert summary["failed"] == 1
    assert summary["errors"][0]["type"] == "TimeoutError"
    assert sink.flush(5)  # still delivered afterwards
    assert "slow" in server.delivered_keys()


# -- per-process connector ---------------------------------------------------------------


def test_process_connector_validates_its_arguments(server):
    with pytest.raises(ConfigError, match="config"):
        ProcessConnector("http://x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="flush_timeout"):
        ProcessConnector(HttpSinkConfig(server.url), flush_timeout=-1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*use of fork\\(\\) may lead to deadlocks:DeprecationWarning")
def test_process_connector_gives_a_forked_child_its_own(server):
    holder = ProcessConnector(HttpSinkConfig(server.url))
    parent = holder.get()
    assert holder.get() is parent
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            child = holder.get()
            ok = child is not parent and child.put(__import__("eventmesh_http_sink").ConnectRecord(1)).result(
                5
            )
            holder.close()
        finally:
            os.write(write_fd, b"1" if ok else b"0")
            os._exit(0)
    os.close(write_fd)
    assert os.read(read_fd, 1) == b"1"
    os.close(read_fd)
    os.waitpid(pid, 0)
    assert holder.get() is parent and not parent.closed
    holder.close()
    assert parent.closed


# -- Celery ------------------------------------------------------------------------------


def test_setup_celery_validates_before_registering(celery_app, server):
    with pytest.raises(ConfigError, match="flush_timeout"):
        ecelery.setup_celery(celery_app, HttpSinkConfig(server.url), flush_timeout="soon")
    assert ecelery.TASK_NAME not in celery_app.tasks
    with pytest.raises(RuntimeError, match="setup_celery"):
        ecelery.get_connector()


def test_celery_deliver_task_returns_the_summary(celery_app, server):
    server.plan("bad", Reply(422))
    task = ecelery.setup_celery(celery_app, HttpSinkConfig(server.url))
    assert task.name == ecelery.TASK_NAME
    assert celery_app.tasks[ecelery.TASK_NAME].name == task.name
    summary = task.delay(
        [{"data": {"n": i}, "record_id": f"k{i}"} for i in range(5)] + [{"data": 0, "record_id": "bad"}]
    ).get()
    assert summary["succeeded"] == 5
    assert summary["failed"] == 1
    assert summary["errors"][0]["record_id"] == "bad"
    assert {f"k{i}" for i in range(5)} <= server.delivered_keys()


def test_celery_retry_failed_resends_only_the_failed_records(celery_app, server):
    server.plan("flaky", Reply(400), Reply(200))  # 400 is final for the connector, fine on the 2nd task run
    task = ecelery.setup_celery(celery_app, HttpSinkConfig(server.url), task_options={"max_retries": 2})
    summary = task.apply(
        args=[[{"data": 1, "record_id": "ok"}, {"data": 2, "record_id": "flaky"}]],
        kwargs={"retry_failed": True},
    ).get()
    assert summary == {"succeeded": 1, "failed": 0, "errors": []}  # the retry ran with "flaky" only
    assert server.keys().count("ok") == 1
    assert server.keys().count("flaky") == 2


def test_celery_retry_failed_raises_when_retries_are_exhausted(celery_app, server):
    server.plan("bad", Reply(400), Reply(400), Reply(400))
    task = ecelery.setup_celery(celery_app, HttpSinkConfig(server.url), task_options={"max_retries": 1})
    with pytest.raises(BatchDeliveryError) as info:
        task.apply(args=[[{"data": 1, "record_id": "bad"}]], kwargs={"retry_failed": True}).get()
    assert info.value.summary["failed"] == 1
    assert server.keys().count("bad") == 2  # the first run and one retry


def test_celery_shutdown_signals_flush_and_close(celery_app, server, recorder):
    from celery import signals

    from eventmesh_http_sink import ConnectRecord

    server.responder = lambda request: Reply(200, delay=0.3)
    ecelery.setup_celery(celery_app, HttpSinkConfig(server.url), flush_timeout=5)
    signals.worker_process_init.send(sender="test")
    connector = ecelery.get_connector()
    record = ConnectRecord(1, callback=recorder)
    connector.put(record)
    signals.worker_process_shutdown.send(sender="test", pid=os.getpid(), exitcode=0)
    assert connector.closed
    recorder.assert_exactly_once([record.record_id])
    assert record.record_id in recorder.successes  # flushed, not cancelled
    # worker_init (solo/threads pools) makes a fresh one; worker_shutdown closes it.
    signals.worker_init.send(sender=None)
    second = ecelery.get_connector()
    assert second is not connector and not second.closed
    signals.worker_shutdown.send(sender=None)
    assert second.closed


def test_celery_flushes_after_every_task(celery_app, server):
    from eventmesh_http_sink import ConnectRecord

    server.responder = lambda request: Reply(200, delay=0.2)
    ecelery.setup_celery(celery_app, HttpSinkConfig(server.url))

    @celery_app.task
    def fire_and_forget():
        ecelery.get_connector().put(ConnectRecord(1, record_id="ff"))

    fire_and_forget.delay().get()
    assert "ff" in server.delivered_keys()  # task_postrun waited for it
    assert ecelery.get_connector().stats().pending == 0


# -- RQ ----------------------------------------------------------------------------------


def test_rq_deliver_needs_configure():
    erq._holder = None
    with pytest.raises(RuntimeError, match="configure"):
        erq.deliver([{"data": 1}])


def test_rq_deliver_returns_the_summary_and_can_fail_the_job(server, rq_configured):
    server.plan("bad", Reply(400))
    summary = erq.deliver([{"data": 1, "record_id": "ok"}])
    assert summary == {"succeeded": 1, "failed": 0, "errors": []}
    with pytest.raises(BatchDeliveryError) as info:
        erq.deliver([{"data": 1, "record_id": "bad"}], raise_on_failure=True)
    assert info.value.summary["errors"][0]["status"] == 400
