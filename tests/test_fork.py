"""Fork safety: a connector used in a parent keeps working in a forked child.

The child gets its own executor, pool and counters (so the server sees new TCP
connections), and never touches the parent's records: those are delivered and
called back exactly once, in the parent. Every test forks while the parent has
records in flight (the server holds their replies).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import trustme

from eventmesh_http_sink import (
    CircuitBreakerConfig,
    ConnectRecord,
    HttpSinkConfig,
    HttpSinkConnector,
    ProcessConnector,
    ResultStoreConfig,
    SinkClosedError,
    forksafe,
)
from eventmesh_http_sink.dispatch.strategies import Failover
from eventmesh_http_sink.metrics import Metrics
from eventmesh_http_sink.outcomes.result_store import ResultStore
from eventmesh_http_sink.prometheus import SinkCollector
from eventmesh_http_sink.prometheus import unregister as prometheus_unregister
from eventmesh_http_sink.scheduling.breaker import CircuitBreaker
from eventmesh_http_sink.scheduling.ratelimit import TokenBucket
from eventmesh_http_sink.testing import FaultServer, Reply
from eventmesh_http_sink.wire.request_options import BearerToken

from .forking import run_in_forked_child

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




@pytest.mark.parametrize("transport", ["urllib3", "requests"])
def test_os_fork_child_gets_fresh_runtime_and_parent_keeps_its_records(server, recorder, transport):
    session = requests.Session() if transport == "requests" else None
    sink, futures = _parent_with_records_in_flight(server, recorder, transport=session)
    try:
        facts = run_in_forked_child(lambda: _child_work(sink, futures, recorder))
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
        grandchild = run_in_forked_child(lambda: _child_work(sink, held, recorder))
        held_statuses = [f.result(timeout=10).status for f in held]
        return {"pid": os.getpid(), "grandchild": grandchild, "held": held_statuses}

    try:
        facts = run_in_forked_child(child)
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
        assert run_in_forked_child(child) == "closed"
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

    assert run_in_forked_child(child) == "closed"


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

        assert run_in_forked_child(child) == 200
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
            outcome = run_in_forked_child(child)
        assert outcome == 200
    finally:
        sink.close(timeout=5)


# -- every helper re-creates its own lock at fork (forksafe) ---------------------------------------


def test_locks_can_be_reinitialised_in_place():
    # forksafe.reinit relies on CPython's at-fork method of locks (3.9+), as
    # concurrent.futures.thread does: fail loudly here if a release drops it.
    lock = threading.Lock()
    lock.acquire()
    forksafe.reinit(lock)
    assert lock.acquire(timeout=1)


def _child_uses_it_while_the_parent_holds_it(lock: Any, use: Callable[[], object]) -> str:
    """Fork while another thread of the parent holds ``lock``; the child calls ``use``.

    Returns "ok", or "stuck" when ``use`` did not return within 5 s in the child
    (the lock a dead thread held: nobody in the child would ever release it).
    """
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder, name="holds-the-lock-at-fork")
    thread.start()
    try:
        assert held.wait(5)

        def child() -> str:
            worker = threading.Thread(target=use, daemon=True)
            worker.start()
            worker.join(5)
            return "stuck" if worker.is_alive() else "ok"

        return run_in_forked_child(child)
    finally:
        release.set()
        thread.join(10)


class _Registry:
    """Stands for a prometheus_client registry (only its identity is used)."""


def _helpers() -> list[Any]:
    sink_config = HttpSinkConfig("http://127.0.0.1:9/")
    token = BearerToken(lambda: "token")
    collector = SinkCollector()
    failover = Failover(("http://a/", "http://b/"), 2, 1.0)
    breaker = CircuitBreaker(CircuitBreakerConfig())
    bucket = TokenBucket(1000.0)
    metrics = Metrics()
    store = ResultStore(10)
    holder = ProcessConnector(sink_config)
    import eventmesh_http_sink.prometheus as prometheus_module

    return [
        pytest.param(token._lock, token.current, id="BearerToken"),
        pytest.param(store._lock, lambda: store.export(), id="ResultStore"),
        pytest.param(holder._lock, holder.current, id="ProcessConnector"),
        pytest.param(bucket._lock, bucket.reserve, id="TokenBucket"),
        pytest.param(breaker._lock, lambda: breaker.before("http://a/"), id="CircuitBreaker"),
        pytest.param(metrics._lock, metrics.snapshot, id="Metrics"),
        pytest.param(
            failover._lock,
            lambda: failover.report(SimpleNamespace(_hop=0), "http://a/", None, True),
            id="Failover",
        ),
        pytest.param(collector._lock, lambda: collector.remove(holder.get()), id="SinkCollector"),
        pytest.param(
            prometheus_module._LOCK,
            lambda: prometheus_unregister(holder.get(), _Registry()),
            id="prometheus-module-lock",
        ),
    ]


@pytest.mark.parametrize(("lock", "use"), _helpers())
def test_a_helper_locked_by_a_parent_thread_at_fork_works_in_the_child(lock, use):
    assert _child_uses_it_while_the_parent_holds_it(lock, use) == "ok"


# -- item 5: a fixed serve_port stays with the parent ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _export_status(url: str) -> int:
    with urllib.request.urlopen(url + "?pageNum=1&pageSize=5", timeout=5) as resp:  # noqa: S310 - loopback
        return int(resp.status)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_forked_child_does_not_serve_a_fixed_serve_port_and_delivers(server):
    port = _free_port()
    config = HttpSinkConfig(server.url, result_store=ResultStoreConfig(serve_port=port))
    sink = HttpSinkConnector(config).start()
    try:
        assert sink.export_url is not None and f":{port}/" in sink.export_url
        assert sink.put(ConnectRecord(0, record_id="p-0")).result(timeout=5).status == 200

        def child() -> dict[str, Any]:
            lines = _Lines()
            logging.getLogger("eventmesh_http_sink").addHandler(lines)
            try:
                futures = [sink.put(ConnectRecord(i, record_id=f"c-{i}")) for i in range(CHILD_RECORDS)]
                statuses = [f.result(timeout=10).status for f in futures]
                # A second connector of the child with the same config: delivers too, logs nothing new.
                with HttpSinkConnector(config) as other:
                    other_status = other.put(ConnectRecord("x")).result(timeout=5).status
                    other_url = other.export_url
                exported = sink.export(1, 100)
                return {
                    "statuses": statuses,
                    "other": [other_status, other_url],
                    "export_url": sink.export_url,
                    "exported": sorted(e["metadata"]["recordId"] for e in exported["pageItems"]),
                    "told": [line for line in lines.lines if "stays with the parent" in line],
                }
            finally:
                logging.getLogger("eventmesh_http_sink").removeHandler(lines)

        facts = run_in_forked_child(child)
        assert facts["statuses"] == [200] * CHILD_RECORDS
        assert facts["other"] == [200, None]
        assert facts["export_url"] is None  # the endpoint is the parent's
        # export() works in the child: the parent's entries it inherited, and its own.
        assert facts["exported"] == sorted(["p-0", *(f"c-{i}" for i in range(CHILD_RECORDS))])
        assert len(facts["told"]) == 1, facts["told"]
        assert str(port) in facts["told"][0]
        # The parent still serves its port.
        assert _export_status(sink.export_url) == 200
    finally:
        sink.close(timeout=5)


def test_a_forked_child_serves_an_ephemeral_port_of_its_own(server):
    config = HttpSinkConfig(server.url, result_store=ResultStoreConfig(serve_port=0))
    sink = HttpSinkConnector(config).start()
    try:
        parent_url = sink.export_url
        assert parent_url is not None

        def child() -> str | None:
            sink.put(ConnectRecord(1)).result(timeout=5)
            url = sink.export_url
            assert url is not None and _export_status(url) == 200
            return url

        child_url = run_in_forked_child(child)
        assert child_url is not None and child_url != parent_url
    finally:
        sink.close(timeout=5)


def _holder_child(holder: ProcessConnector, conn: Any) -> None:
    try:
        connector = holder.get()
        futures = [connector.put(ConnectRecord(i)) for i in range(CHILD_RECORDS)]
        conn.send({"ok": [f.result(timeout=10).status for f in futures], "url": connector.export_url})
    except BaseException as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        holder.close()
        conn.close()


def test_prefork_children_of_a_process_connector_with_a_fixed_serve_port_all_deliver(server):
    # Celery prefork: the parent made its connector (worker_init) and serves the
    # port; every child makes its own connector from the same config.
    config = HttpSinkConfig(server.url, result_store=ResultStoreConfig(serve_port=_free_port()))
    holder = ProcessConnector(config, flush_timeout=5)
    holder.get().start()
    ctx = multiprocessing.get_context("fork")
    try:
        pipes = [ctx.Pipe(duplex=False) for _ in range(2)]
        procs = [ctx.Process(target=_holder_child, args=(holder, send)) for _, send in pipes]
        for proc in procs:
            proc.start()
        for (recv, _), proc in zip(pipes, procs, strict=True):
            assert recv.poll(20), "a child did not report"
            payload = recv.recv()
            proc.join(10)
            assert payload == {"ok": [200] * CHILD_RECORDS, "url": None}
            assert proc.exitcode == 0
    finally:
        holder.close()


# -- item 7: a child forked during the parent's first connections ---------------------------------

_FIRST_CONNECTIONS = r"""
import json, os, sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() with threads running
from eventmesh_http_sink import ConnectRecord, HttpSinkConfig, HttpSinkConnector

url, max_forks = sys.argv[1], int(sys.argv[2])
sink = HttpSinkConnector(HttpSinkConfig(url, max_workers=8))
parent = [sink.put(ConnectRecord(i, record_id=f"p-{i}")) for i in range(6)]
pids = []
# Fork again and again while the parent's workers make their first connections.
while len(pids) < max_forks and (len(pids) < 2 or sink.stats().in_flight < len(parent)):
    pid = os.fork()
    if pid == 0:
        facts = {}
        try:
            futures = [sink.put(ConnectRecord(i, record_id=f"c{os.getpid()}-{i}")) for i in range(20)]
            errors = []
            for future in futures:
                try:
                    future.result(timeout=10)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
            facts = {"errors": errors, "flushed": sink.flush(5)}
        except BaseException as exc:
            facts = {"errors": [repr(exc)], "flushed": None}
        sys.stdout.write(json.dumps(facts) + "\n")
        sys.stdout.flush()
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
print(json.dumps({"forks": len(pids), "parent": [f.result(timeout=10).status for f in parent]}))
sink.close(5)
"""


def _fresh_interpreter_env(pycache: Path | None = None) -> dict[str, str]:
    """This checkout first on the path; with ``pycache``, bytecode read from there and never written."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    if pycache is not None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


@pytest.fixture(scope="module")
def cold_codec_cache(tmp_path_factory) -> Path:
    """A bytecode cache of everything but the idna codec's modules.

    Compiled from source, as on a fresh install, ``encodings.idna`` and
    ``stringprep`` take some 30 ms to import instead of one: the window in
    which a fork breaks the child, wide enough to be hit on every run.
    """
    pycache = tmp_path_factory.mktemp("pycache")
    env = _fresh_interpreter_env(pycache)
    del env["PYTHONDONTWRITEBYTECODE"]
    warm = "import encodings.idna, eventmesh_http_sink, eventmesh_http_sink.testing"
    subprocess.run([sys.executable, "-c", warm], env=env, check=True, timeout=120)
    cold = [*pycache.rglob("stringprep.*.pyc"), *pycache.rglob("encodings/idna.*.pyc")]
    assert len(cold) == 2, cold
    for path in cold:
        path.unlink()
    return pycache


def test_children_forked_during_the_parents_first_connections_deliver(server, cold_codec_cache):
    def respond(request):  # the parent's records stay in flight while the children work
        return Reply(200, delay=0.3) if request.key and request.key.startswith("p-") else Reply(200)

    server.responder = respond
    env = _fresh_interpreter_env(cold_codec_cache)
    for run in range(3):  # a fresh interpreter each time: the codec is imported once per process
        proc = subprocess.run(
            [sys.executable, "-c", _FIRST_CONNECTIONS, server.url, "8"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        *children, summary = (json.loads(line) for line in proc.stdout.splitlines())
        summary_facts = dict(summary)
        assert summary_facts["parent"] == [200] * 6
        assert len(children) == summary_facts["forks"] >= 2
        broken = [c for c in children if c["errors"] or c["flushed"] is not True]
        assert not broken, f"run {run}: {len(broken)} of {len(children)} children lost records: {broken[0]}"


_FIRST_SEND_IMPORTS = r"""
import json, sys
from eventmesh_http_sink import ConnectRecord, HttpSinkConfig, HttpSinkConnector

http_url, https_url, ca = sys.argv[1:4]
new = {}
for name, url in (
    ("urllib3-http", http_url),
    ("urllib3-https", https_url),
    ("requests-http", http_url),
    ("requests-https", https_url),
):
    transport = None
    if name.startswith("requests"):
        import requests  # only now: importing requests loads some of what urllib3 alone would not

        transport = requests.Session()
    with HttpSinkConnector(HttpSinkConfig(url, ca_certs=ca), transport=transport) as sink:
        before = set(sys.modules)  # the runtime exists, no worker thread yet
        assert sink.put(ConnectRecord(1)).result(timeout=10).status == 200
        new[name] = sorted(set(sys.modules) - before)
print(json.dumps(new))
"""


def test_a_first_send_imports_nothing_in_a_worker_thread(server, tmp_path):
    # What a worker imports on its first connection, a process forked at that
    # moment can find half imported. Everything must be loaded before workers run.
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with FaultServer(ssl_context=context) as tls:
        https_url = f"https://localhost:{tls.port}/"
        proc = subprocess.run(
            [sys.executable, "-c", _FIRST_SEND_IMPORTS, server.url, https_url, str(bundle)],
            env=_fresh_interpreter_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == {
        "urllib3-http": [],
        "urllib3-https": [],
        "requests-http": [],
        "requests-https": [],
    }
