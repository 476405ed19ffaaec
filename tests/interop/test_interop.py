"""The connector against real servers nobody here wrote (issue 11).

nginx (plain and TLS), Node.js ``http``, uvicorn (h11 and httptools) and
gunicorn's sync worker, each a real process on a loopback port
(:mod:`tests.interop.servers`), driven only through the public API. Every case
checks the three things that matter whichever server answers:

* exactly one callback per record;
* the server's own count of each ``Idempotency-Key`` (its log, not ours): one
  request per record unless the case says otherwise;
* client connections open at once (sampled from the kernel's table) never above
  ``pool_maxsize``, and, where the server keeps connections alive, no more
  distinct connections than that either.

Run them with ``tox -e interop`` (or ``pytest -m interop tests/interop``). The
main run (``pytest``) deselects the ``interop`` marker except a CI-sized smoke
subset marked ``interop_smoke`` (keep-alive reuse on nginx, nginx TLS and Node).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import socket
import time
from collections.abc import Mapping
from typing import Any

import attrs
import pytest
import urllib3

from eventmesh_http_sink import (
    ConnectRecord,
    HttpSinkConfig,
    HttpSinkConnector,
    HttpStatusError,
    RetryConfig,
    SendExceptionContext,
    SendResult,
    SinkStats,
)
from tests.conftest import Recorder
from tests.interop import tcp_watch
from tests.interop.routes import CHUNKS, INTERIM_FINAL, OK, REJECTED, big_body
from tests.interop.servers import BIG_SIZES, GZIP_TEXT, RECEIVERS, Logged, Receiver, distinct

pytestmark = pytest.mark.interop

WORKERS = 4
POOL = WORKERS  # the config requires pool_maxsize >= max_workers
N = 24
RETRY = RetryConfig(max_retries=2, initial_backoff=0.05, max_backoff=0.2)
HOST = "interop.example"

_SMOKE = ("nginx", "nginx-tls", "node")


@attrs.define
class Run:
    """What one delivery run left behind on the client side."""

    recorder: Recorder
    bursts: list[list[str]]
    stats: SinkStats
    peak_open: int | None

    @property
    def ids(self) -> list[str]:
        return [i for burst in self.bursts for i in burst]


def deliver(
    receiver: Receiver,
    path: str,
    *,
    n: int = N,
    gaps: tuple[float, ...] = (),
    data: Any = None,
    **options: Any,
) -> Run:
    """Put ``n`` records to ``path`` (one burst, or one more burst after each gap), flush, close."""
    recorder = Recorder()
    bursts = [
        [ConnectRecord({"n": i, "burst": b} if data is None else data, callback=recorder) for i in range(n)]
        for b in range(len(gaps) + 1)
    ]
    config = HttpSinkConfig(
        receiver.url + path,
        max_workers=WORKERS,
        pool_maxsize=POOL,
        retry=RETRY,
        read_timeout=10,
        attempt_timeout=20,
        **receiver.client_options(),
        **options,
    )
    watch = tcp_watch.OpenConnections(receiver.port) if tcp_watch.available() else None
    # The connector closes first: the watch sees every socket it ever had open.
    with watch or contextlib.nullcontext(), HttpSinkConnector(config) as sink:
        for b, burst in enumerate(bursts):
            if b:
                time.sleep(gaps[b - 1])
            for record in burst:
                sink.put(record)
            assert sink.flush(60), f"records still pending after 60 s ({receiver.name})"
            if watch is not None:
                watch.sample()  # the pool's idle connections are all still open here
        stats = sink.stats()
    ids = [[r.record_id for r in burst] for burst in bursts]
    return Run(recorder, ids, stats, watch.peak if watch is not None else None)


def check(receiver: Receiver, run: Run) -> list[Logged]:
    """One callback per record, one request per key at the server, connections within the pool."""
    run.recorder.assert_exactly_once(run.ids)
    logged = receiver.requests_for(run.ids)
    per_key = collections.Counter(e.key for e in logged)
    missing = [k for k in run.ids if k not in per_key]
    repeated = {k: c for k, c in per_key.items() if c != 1}
    assert not missing, f"{receiver.name} never saw {len(missing)} of {len(run.ids)} keys{_client_side(run)}"
    assert not repeated, f"{receiver.name} got these keys more than once: {repeated}"
    if run.peak_open is not None:
        assert run.peak_open <= POOL, f"{run.peak_open} connections open at once, pool_maxsize={POOL}"
    return logged


def _client_side(run: Run) -> str:
    failures = list(run.recorder.failures.values())
    if not failures:
        return ""
    return f" (client side: {len(failures)} failed, e.g. {failures[0].error!r})"


def successes(receiver: Receiver, run: Run, status: int = 200) -> list[SendResult]:
    """Every record succeeded with ``status`` in one attempt."""
    failures: Mapping[str, SendExceptionContext] = run.recorder.failures
    assert not failures, (
        f"{len(failures)} of {len(run.ids)} records failed on {receiver.name}, e.g. "
        f"{next(iter(failures.values())).error!r}\n{receiver.diagnostics()}"
    )
    results = [run.recorder.successes[i] for i in run.ids]
    assert {r.status for r in results} == {status}
    assert {r.attempts for r in results} == {1}, "a record needed more than one attempt"
    assert run.stats.retried == 0
    return results


def check_connections(receiver: Receiver, logged: list[Logged]) -> None:
    """Kept-alive connections were reused and never more than ``pool_maxsize``; else one request each."""
    per_conn = distinct(logged)
    if receiver.closes_every_response:
        assert set(per_conn.values()) == {1}, f"a closed connection was reused: {per_conn}"
    else:
        assert len(per_conn) <= POOL, f"{len(per_conn)} connections for pool_maxsize={POOL}: {per_conn}"


def probe(receiver: Receiver, path: str, **kwargs: Any) -> urllib3.BaseHTTPResponse:
    """One request with urllib3 alone: shows what the server itself sends (the fixture's proof)."""
    with urllib3.PoolManager(ca_certs=receiver.client_options().get("ca_certs")) as pool:
        return pool.request("POST", receiver.url + path, body=b"{}", retries=False, **kwargs)


# -- the cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "receiver",
    [pytest.param(name, marks=pytest.mark.interop_smoke) if name in _SMOKE else name for name in RECEIVERS],
    indirect=True,
)
def test_keep_alive_reuse(receiver: Receiver) -> None:
    run = deliver(receiver, "/ok")
    logged = check(receiver, run)
    assert [r.response_body for r in successes(receiver, run)] == [OK] * N
    check_connections(receiver, logged)
    if not receiver.closes_every_response:
        assert len(distinct(logged)) < N, "no connection carried two requests"


def test_idle_close(receiver: Receiver) -> None:
    """The server closes idle connections between bursts; the next burst loses nothing."""
    gap = receiver.idle_close_after() + 0.7
    run = deliver(receiver, "/idle", n=8, gaps=(gap, gap))
    logged = check(receiver, run)
    successes(receiver, run)
    conns = [{e.conn for e in logged if e.key in set(burst)} for burst in run.bursts]
    for before, after in itertools.pairwise(conns):
        assert not before & after, "a connection outlived the server's idle timeout: the case tests nothing"
    for burst_conns in conns:
        assert len(burst_conns) <= (8 if receiver.closes_every_response else POOL)


def test_idle_race(receiver: Receiver) -> None:
    """Bursts separated by idles around the server's idle close (0.9-1.1x): no failure, no retry.

    A request sent on a kept-alive connection the server is closing at that moment
    fails before any byte of an answer: the server cannot have processed it, so it
    is sent again on a fresh connection at once, without using a retry (issue 11).
    """
    if receiver.closes_every_response:
        pytest.skip(f"{receiver.name} closes after every response: no idle connection to race")
    idle = receiver.idle_close_after()
    gaps = tuple(idle * f for f in (0.92, 0.98, 1.02, 1.08))
    run = deliver(receiver, "/idle", n=POOL * 2, gaps=gaps)
    check(receiver, run)
    successes(receiver, run)


def test_connection_close(receiver: Receiver) -> None:
    if not receiver.closes_every_response:
        assert probe(receiver, "/close").headers.get("Connection", "").lower() == "close"
    run = deliver(receiver, "/close")
    logged = check(receiver, run)
    assert [r.response_body for r in successes(receiver, run)] == [OK] * N
    per_conn = distinct(logged)
    assert len(per_conn) == N, f"a connection the server closed was reused: {per_conn}"


def test_chunked_answer(receiver: Receiver) -> None:
    assert probe(receiver, "/chunked").headers.get("Transfer-Encoding") == "chunked"
    run = deliver(receiver, "/chunked")
    logged = check(receiver, run)
    assert {r.response_body for r in successes(receiver, run)} == {b"".join(CHUNKS)}
    check_connections(receiver, logged)


def test_no_content(receiver: Receiver) -> None:
    run = deliver(receiver, "/nocontent")
    logged = check(receiver, run)
    assert {r.response_body for r in successes(receiver, run, status=204)} == {b""}
    check_connections(receiver, logged)


def test_head(receiver: Receiver) -> None:
    """A HEAD answer has a Content-Length but no body: reading one would desync the connection."""
    run = deliver(receiver, "/ok", method="HEAD")
    logged = check(receiver, run)
    assert {e.method for e in logged} == {"HEAD"}
    assert {r.response_body for r in successes(receiver, run)} == {b""}
    check_connections(receiver, logged)


def test_interim_answers(receiver: Receiver) -> None:
    """``100 Continue`` and two ``103 Early Hints`` (unsolicited) before the final answer."""
    if receiver.interim_skip:
        pytest.skip(f"{receiver.name}: {receiver.interim_skip}")
    head = _raw_exchange(receiver, b"POST /interim HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    assert head.startswith(b"HTTP/1.1 100 Continue\r\n") and head.count(b" 103 Early Hints\r\n") == 2
    run = deliver(receiver, "/interim")
    logged = check(receiver, run)
    assert {r.response_body for r in successes(receiver, run)} == {INTERIM_FINAL}
    check_connections(receiver, logged)


def test_reject_before_body(receiver: Receiver) -> None:
    """The server answers 413 from the request head, without reading the 2 MiB body."""
    n = 6
    run = deliver(receiver, "/reject", n=n, data=b"x" * (2 * 1024 * 1024))
    logged = check(receiver, run)
    assert not run.recorder.successes
    errors = [run.recorder.failures[i].error for i in run.ids]
    assert all(isinstance(e, HttpStatusError) and e.status == 413 for e in errors), errors[:3]
    assert {run.recorder.failures[i].attempts for i in run.ids} == {1}
    if not receiver.name.startswith("nginx"):
        assert {e.body for e in errors if isinstance(e, HttpStatusError)} == {REJECTED}
    else:
        assert {e.status for e in logged} == {413}


@pytest.mark.parametrize("size", BIG_SIZES, ids=lambda s: f"{s // 1024}KiB")
def test_large_body(receiver: Receiver, size: int) -> None:
    """A body far above ``max_response_bytes``: the result keeps exactly its first bytes."""
    keep = 4096
    run = deliver(receiver, f"/big?size={size}", n=6, max_response_bytes=keep)
    check(receiver, run)
    assert {r.response_body for r in successes(receiver, run)} == {big_body(size)[:keep]}


@pytest.mark.parametrize("where", ["headers", "header_fn"])
def test_host_override(receiver: Receiver, where: str) -> None:
    """A configured or per-record ``Host`` replaces the library's own: one Host header, the user's."""
    fixed = {"Host": HOST}
    options: dict[str, Any] = {"headers": fixed} if where == "headers" else {"header_fn": lambda _r: fixed}
    run = deliver(receiver, "/ok", n=8, **options)
    logged = check(receiver, run)
    successes(receiver, run)
    assert {e.hosts for e in logged} == {(HOST,)}


def test_accept_encoding(receiver: Receiver) -> None:
    """A user's ``Accept-Encoding: gzip`` replaces ``identity``; the result holds the decoded body."""
    if not receiver.compresses:
        pytest.skip(f"{receiver.name} does not compress answers itself")
    assert probe(receiver, "/gzip", headers={"Accept-Encoding": "gzip"}).headers["Content-Encoding"] == "gzip"
    run = deliver(receiver, "/gzip", n=8, headers={"Accept-Encoding": "gzip"})
    logged = check(receiver, run)
    assert {r.response_body for r in successes(receiver, run)} == {GZIP_TEXT}
    # nginx reads the first Accept-Encoding only: it compressed iff ours was the one sent.
    assert {e.compressed for e in logged} == {True}, "the server never saw Accept-Encoding: gzip alone"


def _raw_exchange(receiver: Receiver, request: bytes) -> bytes:
    """Send ``request`` on a plain socket; return everything read until the final body arrived."""
    assert receiver.tls_ca is None
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while INTERIM_FINAL not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data
