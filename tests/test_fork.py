"""Fork safety: a connector used in a parent keeps working in a forked child.

The child gets its own executor, pool and counters (so the server sees new TCP
connections), and never touches the parent's records: those are delivered and
called back exactly once, in the parent. Every test forks while the parent has
records in flight (the server holds their replies).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time

import pytest
import requests

from eventmesh_http_sink import ConnectRecord, HttpSinkConfig, HttpSinkConnector, SinkClosedError
from eventmesh_http_sink.testing import FaultServer, Reply

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    # Python 3.12+ warns about fork() in a threaded process: forking with threads
    # running is exactly what these tests are about.
    pytest.mark.filterwarnings("ignore:.*use of fork\\(\\) may lead to deadlocks:DeprecationWarning"),
]

HOLD = 0.8  # seconds the server holds the parent's in-flight replies
CHILD_RECORDS = 20


def _hold_parent_records(server: FaultServer) -> None:
    # Parent keys start with "p-"; the child's are answered at once.
    def respond(request):
        if request.key and request.key.startswith("p-"):
            return Reply(200, delay=HOLD)
        if request.key and request.key.startswith("warm-"):
            return Reply(200, delay=0.2)  # overlapping: one connection each
        return Reply(200)

    server.responder = respond


def _parent_with_records_in_flight(server, recorder, n=4, transport=None):
    """A used connector whose pool holds connections, with n records on the wire."""
    _hold_parent_records(server)
    sink = HttpSinkConnector(HttpSinkConfig(server.url, max_workers=8), transport=transport)
    # Warm up on more connections than will be busy, so the pool holds idle ones the
    # child could wrongly pick up.
    warm = [sink.put(ConnectRecord(i, record_id=f"warm-{i}")) for i in range(n + 3)]
    assert [f.result(timeout=5).status for f in warm] == [200] * (n + 3)
    assert len({r.connection for r in server.requests}) > n
    futures = [sink.put(ConnectRecord(i, callback=recorder, record_id=f"p-{i}")) for i in range(n)]
    deadline = time.monotonic() + 5
    while sink.stats().in_flight < n:  # all of them on the wire, none answered
        assert time.monotonic() < deadline, "the parent's records never got in flight"
        time.sleep(0.01)
    return sink, futures


def _child_work(sink: HttpSinkConnector, parent_futures, parent_recorder) -> dict:
    """What the child does with the inherited connector; returns facts for the parent."""
    child_calls: list[str] = []

    class ChildCallback:
        def on_success(self, result):
            child_calls.append(result.record_id)

        def on_exception(self, context):
            child_calls.append(f"FAILED {context.record_id}: {context.exception}")

    stats_before = sink.stats().as_dict()
    futures = [
        sink.put(ConnectRecord(i, callback=ChildCallback(), record_id=f"c{os.getpid()}-{i}"))
        for i in range(CHILD_RECORDS)
    ]
    statuses = [f.result(timeout=10).status for f in futures]
    flushed = sink.flush(timeout=5)  # must not wait for the parent's records
    stats_after = sink.stats().as_dict()
    time.sleep(HOLD + 0.2)  # past the parent's replies: nothing of the parent may resolve here
    sink.close(timeout=5)
    return {
        "pid": os.getpid(),
        "statuses": statuses,
        "flushed": flushed,
        "child_calls": sorted(child_calls),
        "stats_before": stats_before,
        "stats_after": stats_after,
        "parent_futures_done_in_child": sum(f.done() for f in parent_futures),
        "parent_callbacks_in_child": dict(parent_recorder.calls),
        "threads": [t.name for t in threading.enumerate()],
    }


def _check_child(facts: dict) -> None:
    assert facts["statuses"] == [200] * CHILD_RECORDS
    assert facts["flushed"] is True
    assert len(facts["child_calls"]) == CHILD_RECORDS
    assert not any(c.startswith("FAILED") for c in facts["child_calls"])
    # Fresh counters: the parent's pending records are not the child's.
    assert facts["stats_before"]["pending"] == 0
    assert facts["stats_before"]["submitted"] == 0
    assert facts["stats_after"]["submitted"] == CHILD_RECORDS
    assert facts["stats_after"]["succeeded"] == CHILD_RECORDS
    # The child never resolved nor called back the parent's records.
    assert facts["parent_futures_done_in_child"] == 0
    assert facts["parent_callbacks_in_child"] == {}


def _check_parent(server, sink, futures, recorder, child_pids) -> None:
    assert all(f.result(timeout=10).status == 200 for f in futures)
    assert sink.flush(timeout=10)
    parent_ids = [f"p-{i}" for i in range(len(futures))]
    recorder.assert_exactly_once(parent_ids)
    stats = sink.stats()
    keys = server.keys()
    warm = sum(1 for k in keys if k and k.startswith("warm-"))
    assert stats.submitted == len(futures) + warm  # no child record counted here
    assert stats.succeeded == len(futures) + warm
    assert stats.pending == 0
    # Each parent record was sent once, and none of the child's records went through the parent.
    keys = server.keys()
    assert all(keys.count(k) == 1 for k in parent_ids)
    parent_conns = {
        r.connection for r in server.requests if r.key and (r.key.startswith("warm-") or r.key in parent_ids)
    }
    for pid in child_pids:
        child_conns = {r.connection for r in server.requests if r.key and r.key.startswith(f"c{pid}-")}
        assert len([r for r in server.requests if r.key and r.key.startswith(f"c{pid}-")]) == CHILD_RECORDS
        # The child opened its own connections: it never wrote to the parent's sockets.
        assert child_conns
        assert not child_conns & parent_conns, "the child reused a connection of the parent"
    # The parent keeps working after the fork, on its own pool.
    assert sink.put(ConnectRecord("after", record_id="after-fork")).result(timeout=5).status == 200


def _run_in_forked_child(target) -> int:
    """os.fork(): run target in the child, send its JSON to the parent, leave with os._exit."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_fd)
            try:
                payload = {"ok": target()}
            except BaseException as exc:
                payload = {"error": f"{type(exc).__name__}: {exc}"}
            with os.fdopen(write_fd, "w") as out:
                json.dump(payload, out)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as inp:
        raw = inp.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, raw
    payload = json.loads(raw)
    assert "error" not in payload, payload.get("error")
    return payload["ok"]


@pytest.mark.parametrize("transport", ["urllib3", "requests"])
def test_os_fork_child_gets_fresh_runtime_and_parent_keeps_its_records(server, recorder, transport):
    session = requests.Session() if transport == "requests" else None
    sink, futures = _parent_with_records_in_flight(server, recorder, transport=session)
    try:
        facts = _run_in_forked_child(lambda: _child_work(sink, futures, recorder))
        _check_child(facts)
        _check_parent(server, sink, futures, recorder, [facts["pid"]])
    finally:
        sink.close(timeout=5)
        if session is not None:
            session.close()


def test_grandchild_of_a_child_with_records_in_flight(server, recorder):
    sink, futures = _parent_with_records_in_flight(server, recorder)

    def child():
        # The child puts records the server holds, forks while they are in flight,
        # and its grandchild delivers its own over new connections.
        held = [sink.put(ConnectRecord(i, record_id=f"p-child-{os.getpid()}-{i}")) for i in range(2)]
        grandchild = _run_in_forked_child(lambda: _child_work(sink, held, recorder))
        held_statuses = [f.result(timeout=10).status for f in held]
        return {"pid": os.getpid(), "grandchild": grandchild, "held": held_statuses}

    try:
        facts = _run_in_forked_child(child)
        _check_child(facts["grandchild"])
        assert facts["held"] == [200, 200]
        grand_conns = {
            r.connection
            for r in server.requests
            if r.key and r.key.startswith(f"c{facts['grandchild']['pid']}-")
        }
        child_conns = {
            r.connection for r in server.requests if r.key and r.key.startswith(f"p-child-{facts['pid']}-")
        }
        assert grand_conns and child_conns and not grand_conns & child_conns
        _check_parent(server, sink, futures, recorder, [facts["grandchild"]["pid"]])
    finally:
        sink.close(timeout=5)


def _mp_target(sink, futures, recorder, conn) -> None:
    try:
        conn.send({"ok": _child_work(sink, futures, recorder)})
    except BaseException as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def test_multiprocessing_fork_context(server, recorder):
    sink, futures = _parent_with_records_in_flight(server, recorder)
    ctx = multiprocessing.get_context("fork")
    try:
        pipes = [ctx.Pipe(duplex=False) for _ in range(2)]
        procs = [ctx.Process(target=_mp_target, args=(sink, futures, recorder, send)) for _, send in pipes]
        for proc in procs:
            proc.start()
        results = []
        for (recv, _), proc in zip(pipes, procs, strict=True):
            assert recv.poll(20), "a child did not report"
            results.append(recv.recv())
            proc.join(10)
            assert proc.exitcode == 0
        for payload in results:
            assert "error" not in payload, payload.get("error")
            _check_child(payload["ok"])
        pids = [payload["ok"]["pid"] for payload in results]
        _check_parent(server, sink, futures, recorder, pids)
        # Two children, two sets of connections, disjoint from each other too.
        conns = [
            {r.connection for r in server.requests if r.key and r.key.startswith(f"c{pid}-")} for pid in pids
        ]
        assert not conns[0] & conns[1]
    finally:
        sink.close(timeout=5)


def test_child_close_does_not_close_the_parent(server, recorder):
    sink, futures = _parent_with_records_in_flight(server, recorder, n=2)

    def child():
        sink.put(ConnectRecord("x", record_id=f"c{os.getpid()}-0")).result(timeout=5)
        sink.close(timeout=5)
        try:
            sink.put(ConnectRecord("y"))
        except SinkClosedError:
            return "closed"
        return "still open"

    try:
        assert _run_in_forked_child(child) == "closed"
        assert not sink.closed
        assert all(f.result(timeout=10).status == 200 for f in futures)
        recorder.assert_exactly_once(["p-0", "p-1"])
    finally:
        sink.close(timeout=5)


def test_connector_closed_in_parent_stays_closed_in_child(server):
    sink = HttpSinkConnector(HttpSinkConfig(server.url))
    sink.put(ConnectRecord(1)).result(timeout=5)
    sink.close()

    def child():
        try:
            sink.put(ConnectRecord(2))
        except SinkClosedError:
            return "closed"
        return "open"

    assert _run_in_forked_child(child) == "closed"


def test_child_is_not_stuck_on_a_lock_the_parent_held_at_fork(server):
    # The parent's worker is fetching the bearer token (holding the token's lock)
    # when the process forks: the child must fetch its own, not wait forever on a
    # lock no thread of the child will release.
    fetching = threading.Event()

    def token_source():
        if os.getpid() == parent_pid:
            fetching.set()
            time.sleep(1.0)
        return f"token-{os.getpid()}"

    parent_pid = os.getpid()
    sink = HttpSinkConnector(HttpSinkConfig(server.url, bearer_token=token_source))
    try:
        first = sink.put(ConnectRecord(1, record_id="p-token"))
        assert fetching.wait(5)

        def child():
            future = sink.put(ConnectRecord(2, record_id=f"c{os.getpid()}-token"))
            try:
                return future.result(timeout=5).status
            except TimeoutError:
                return "stuck"

        assert _run_in_forked_child(child) == 200
        assert first.result(timeout=5).status == 200
        auth = {r.key: r.headers.get("authorization") for r in server.requests}
        assert auth["p-token"] == f"Bearer token-{parent_pid}"
        [child_key] = [k for k in auth if k and k.startswith("c")]
        assert auth[child_key] != auth["p-token"]  # the child fetched its own token
    finally:
        sink.close(timeout=5)


def test_child_is_not_stuck_on_the_failover_lock_held_at_fork(server):
    # White-box: the failover strategy's lock is held by a parent thread for the
    # instant of the fork; the child's first send must not wait on it forever.
    sink = HttpSinkConnector(HttpSinkConfig([server.url, server.url + "b"], delivery_strategy="failover"))
    try:
        assert sink.put(ConnectRecord(0)).result(timeout=5).status == 200

        def child():
            try:
                return sink.put(ConnectRecord(1, record_id=f"c{os.getpid()}-0")).result(timeout=5).status
            except TimeoutError:
                return "stuck"

        with sink._strategy._lock:
            outcome = _run_in_forked_child(child)
        assert outcome == 200
    finally:
        sink.close(timeout=5)
