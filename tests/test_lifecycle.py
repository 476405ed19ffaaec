"""Backpressure, flush, close and interpreter exit: nothing is dropped silently."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from eventmesh_http_sink import (
    ConnectRecord,
    HttpSinkConfig,
    HttpSinkConnector,
    QueueFullError,
    SinkClosedError,
)
from eventmesh_http_sink.testing import Reply


def _slow(server, seconds=0.5):
    server.responder = lambda request: Reply(200, delay=seconds)


def test_pending_never_exceeds_max_pending_and_raise_refuses(server, connector_factory, recorder):
    _slow(server, 0.3)
    sink = connector_factory(server.url, max_workers=2, max_pending=3, when_full="raise")
    accepted = [ConnectRecord(i, callback=recorder) for i in range(3)]
    sink.put_all(accepted)
    refused = ConnectRecord("no room", callback=recorder)
    with pytest.raises(QueueFullError):
        sink.put(refused)
    assert sink.stats().pending == 3
    assert sink.flush(5)
    # The refused record got only the exception: no callback, no request.
    recorder.assert_exactly_once([r.record_id for r in accepted])
    assert server.keys().count(refused.record_id) == 0


def test_put_all_reports_what_was_accepted_when_full(server, connector_factory):
    _slow(server, 0.3)
    sink = connector_factory(server.url, max_workers=1, max_pending=2, when_full="raise")
    with pytest.raises(QueueFullError) as info:
        sink.put_all([ConnectRecord(i) for i in range(4)])
    assert len(info.value.accepted) == 2
    assert all(f.result(timeout=5).status == 200 for f in info.value.accepted)


def test_blocked_put_waits_for_room(server, connector_factory):
    _slow(server, 0.3)
    sink = connector_factory(server.url, max_workers=1, max_pending=1)
    sink.put(ConnectRecord(1))
    started = time.monotonic()
    second = sink.put(ConnectRecord(2))  # blocks until the first finishes
    assert time.monotonic() - started >= 0.2
    assert second.result(timeout=5).status == 200


def test_blocked_put_times_out(server, connector_factory):
    _slow(server, 1.0)
    sink = connector_factory(server.url, max_workers=1, max_pending=1, put_timeout=0.2)
    sink.put(ConnectRecord(1))
    started = time.monotonic()
    with pytest.raises(QueueFullError, match="put_timeout"):
        sink.put(ConnectRecord(2))
    assert 0.15 <= time.monotonic() - started < 1.0


def test_close_waits_for_in_flight_and_scheduled_retries(server, connector_factory, recorder):
    retried = ConnectRecord("retry", callback=recorder)
    server.plan(retried.record_id, Reply(503, headers={"Retry-After": "1"}), Reply(200))
    _slow(server, 0.3)
    sink = connector_factory(server.url)
    records = [ConnectRecord(i, callback=recorder) for i in range(10)] + [retried]
    sink.put_all(records)
    sink.close()
    # Java's stop() returns with requests in flight; ours delivered everything first.
    assert len(recorder.successes) == 11
    recorder.assert_exactly_once([r.record_id for r in records])
    assert recorder.successes[retried.record_id].attempts == 2
    with pytest.raises(SinkClosedError):
        sink.put(ConnectRecord("late"))
    sink.close()  # twice is harmless


def test_close_deadline_cancels_leftovers_with_sink_closed_error(server, connector_factory, recorder):
    _slow(server, 3.0)
    sink = connector_factory(server.url, max_workers=2)
    in_flight = [ConnectRecord(i, callback=recorder) for i in range(2)]
    queued = [ConnectRecord(f"q{i}", callback=recorder) for i in range(5)]
    scheduled = ConnectRecord("sched", callback=recorder)
    server.plan(scheduled.record_id, Reply(503, headers={"Retry-After": "30"}))
    futures = sink.put_all([scheduled, *in_flight, *queued])
    time.sleep(0.2)
    started = time.monotonic()
    sink.close(timeout=0.3)
    assert time.monotonic() - started < 2.0  # returned at its deadline, sockets aborted
    everyone = [scheduled, *in_flight, *queued]
    recorder.assert_exactly_once([r.record_id for r in everyone])
    assert not recorder.successes
    for record, future in zip(everyone, futures, strict=True):
        context = recorder.failures[record.record_id]
        assert isinstance(context.error, SinkClosedError)
        assert future.exception() is context.error
    assert recorder.failures[queued[0].record_id].attempts == 0
    stats = sink.stats()
    assert stats.failed == len(everyone)
    assert stats.pending == 0


def test_blocked_put_is_released_by_close(server, connector_factory):
    _slow(server, 1.0)
    sink = connector_factory(server.url, max_workers=1, max_pending=1)
    sink.put(ConnectRecord(1))
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            sink.put(ConnectRecord(2))
        except SinkClosedError as exc:
            errors.append(exc)

    thread = threading.Thread(target=blocked)
    thread.start()
    time.sleep(0.1)
    sink.close(timeout=0.1)
    thread.join(5)
    assert not thread.is_alive()
    assert len(errors) == 1


def test_flush_times_out_then_succeeds(server, connector_factory):
    _slow(server, 0.5)
    sink = connector_factory(server.url)
    sink.put(ConnectRecord(1))
    assert sink.flush(timeout=0.05) is False
    assert sink.flush(timeout=5) is True
    assert not sink.closed


def test_flush_or_close_from_a_callback_refuses_to_deadlock(server, connector_factory):
    outcomes: list[str] = []
    holder: list[HttpSinkConnector] = []

    class Reentrant:
        def on_success(self, result):
            for call in (holder[0].flush, holder[0].close):
                try:
                    call()
                except RuntimeError as exc:
                    outcomes.append(str(exc))

        def on_exception(self, context):
            outcomes.append("unexpected")

    sink = connector_factory(server.url)
    holder.append(sink)
    sink.put(ConnectRecord(1, callback=Reentrant()))
    assert sink.flush(5)
    assert len(outcomes) == 2
    assert all("wait for itself" in o for o in outcomes)


def test_context_manager_starts_and_closes(server):
    config = HttpSinkConfig(server.url)
    with HttpSinkConnector(config) as sink:
        futures = sink.put_all([ConnectRecord(i) for i in range(20)])
    assert sink.closed
    assert all(f.done() and f.result().status == 200 for f in futures)
    with pytest.raises(SinkClosedError):
        sink.start()


def test_close_leaves_no_worker_threads(server):
    before = {t.ident for t in threading.enumerate()}
    sink = HttpSinkConnector(HttpSinkConfig(server.url, max_workers=4))
    record = ConnectRecord("r")
    server.plan(record.record_id, Reply(503, headers={"Retry-After": "0"}), Reply(200))
    sink.put_all([record, *[ConnectRecord(i) for i in range(20)]])
    sink.close()
    leftover = [
        t.name for t in threading.enumerate() if t.ident not in before and t.name.startswith("eventmesh")
    ]
    assert leftover == []


def test_interpreter_exit_with_unclosed_connector_does_not_hang(server):
    server.responder = lambda request: Reply.hang(30)
    script = textwrap.dedent(
        f"""
        import sys
        from eventmesh_http_sink import ConnectRecord, HttpSinkConfig, HttpSinkConnector
        class CB:
            def on_success(self, r):
                print("ok", flush=True)
            def on_exception(self, c):
                print(type(c.error).__name__, flush=True)
        sink = HttpSinkConnector(HttpSinkConfig({server.url!r}, max_workers=2, exit_timeout=0.5))
        for i in range(5):
            sink.put(ConnectRecord(i, callback=CB()))
        print("exiting", flush=True)
        """
    )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20, cwd=_repo_root()
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 10, f"exit took {elapsed:.1f}s"
    # Every record still got its one outcome: cancelled at exit.
    assert proc.stdout.count("SinkClosedError") == 5, proc.stdout


def _repo_root() -> str:
    import pathlib

    return str(pathlib.Path(__file__).resolve().parent.parent)
