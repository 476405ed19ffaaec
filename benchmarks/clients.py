"""The clients compare.py measures, one per fresh interpreter: ``python clients.py --client NAME ...``.

Each client sends ``--records`` JSON records (~150 bytes, one POST each, from
:mod:`workload`) to ``--url`` after a warm-up that opens its connections and
starts its threads, and prints one JSON line: records delivered (2xx), wall
seconds and CPU seconds (user + system of this process, all threads, from
``getrusage``) of the timed part. ``--ca`` names the CA file an https server is
verified against. ``--package-root`` imports ``eventmesh_http_sink`` from
another checkout (``compare.py --against-ref``); the line names the file
imported, so the parent can check it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from workload import Count, make_record, records  # benchmarks/ is sys.path[0] for this script

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a fresh clone without installing
    sys.path.insert(1, str(ROOT))

HEADERS = {"Content-Type": "application/json"}
RAW_LOOP_THREADS = 4  # issue 14's raw loop: 4 threads, whatever --workers says


def _encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


class Span:
    """Wall-clock and CPU seconds (this process, all threads) between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    @staticmethod
    def _cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._c0 = self._cpu()

    def stop(self) -> None:
        self.wall = time.perf_counter() - self._t0
        self.cpu = self._cpu() - self._c0


# -- clients: each runs in its own interpreter, returns (span, delivered) ----------------------
# ``ca`` is the CA file to verify an https server against (None for http).


def run_connector(url: str, n: int, workers: int, ca: str | None, batch: int = 0) -> tuple[Span, int]:
    from eventmesh_http_sink import BatchConfig, ConnectRecord, HttpSinkConfig, HttpSinkConnector

    callback = Count()
    options: dict[str, Any] = {"ca_certs": ca} if ca else {}
    if batch:
        options["batch"] = BatchConfig(max_records=batch)
    config = HttpSinkConfig(url, max_workers=workers, max_pending=max(10_000, n), **options)
    span = Span()
    with HttpSinkConnector(config) as sink:
        _warm(lambda: sink.put(ConnectRecord(make_record(-1), callback=callback)), workers)
        sink.flush()
        callback.ok = 0
        span.start()
        for data in records(n):
            sink.put(ConnectRecord(data, callback=callback))
        sink.flush()
        span.stop()
    return span, callback.ok


# Extra figures a client reports besides rate and CPU (the child adds them to its JSON line).
EXTRA: dict[str, float] = {}


def run_connector_put(url: str, n: int, workers: int, ca: str | None) -> tuple[Span, int]:
    """``put()`` of a ready record, timed call by call (issue 14's target: median <= 4 µs).

    A ready record is a ``ConnectRecord`` built before the timer starts (its id
    and validators are the caller's work). The workers send meanwhile (nothing
    is flushed until the end) and ``max_pending`` is far above ``n``, so no
    ``put`` waits for room: this is the cost of accepting a record, with the
    GIL shared with the workers, as a producer sees it. The median includes the
    timer's own overhead (``perf_counter_ns`` twice, reported as
    ``timer_overhead_us``).
    """
    from eventmesh_http_sink import ConnectRecord, HttpSinkConfig, HttpSinkConnector

    callback = Count()
    options: dict[str, Any] = {"ca_certs": ca} if ca else {}
    config = HttpSinkConfig(url, max_workers=workers, max_pending=max(10_000, 2 * n), **options)
    clock = time.perf_counter_ns
    times = [0] * n
    empty = []
    for _ in range(1000):
        t0 = clock()
        empty.append(clock() - t0)
    span = Span()
    with HttpSinkConnector(config) as sink:
        _warm(lambda: sink.put(ConnectRecord(make_record(-1), callback=callback)), workers)
        sink.flush()
        callback.ok = 0
        put = sink.put
        span.start()
        for i, data in enumerate(records(n)):
            record = ConnectRecord(data, callback=callback)
            t0 = clock()
            put(record)
            times[i] = clock() - t0
        sink.flush()
        span.stop()
    EXTRA["put_median_us"] = statistics.median(times) / 1000
    EXTRA["put_p90_us"] = sorted(times)[int(n * 0.9)] / 1000
    EXTRA["timer_overhead_us"] = statistics.median(empty) / 1000
    return span, callback.ok


def run_connector_batched(url: str, n: int, workers: int, ca: str | None) -> tuple[Span, int]:
    return run_connector(url, n, workers, ca, batch=100)


def run_requests_futures(url: str, n: int, workers: int, ca: str | None) -> tuple[Span, int]:
    from requests_futures.sessions import FuturesSession

    # verify= per request: requests lets REQUESTS_CA_BUNDLE override a session's verify.
    verify: str | bool = ca or True
    span = Span()
    with FuturesSession(max_workers=workers) as session:
        warm = _warm(lambda: session.post(url, data=b"{}", headers=HEADERS, verify=verify), workers)
        [f.result() for f in warm]
        span.start()
        futures = [session.post(url, data=_encode(d), headers=HEADERS, verify=verify) for d in records(n)]
        ok = sum(1 for f in futures if f.result().status_code == 200)
        span.stop()
    return span, ok


def _pool(url: str, workers: int, ca: str | None) -> tuple[Any, str]:
    import urllib3

    u = urllib3.util.parse_url(url)
    if u.scheme == "https":
        pool: Any = urllib3.HTTPSConnectionPool(
            u.host, u.port, maxsize=workers, block=True, cert_reqs="CERT_REQUIRED", ca_certs=ca
        )
    else:
        pool = urllib3.HTTPConnectionPool(u.host, u.port, maxsize=workers, block=True)
    return pool, u.request_uri


def run_urllib3_pool(url: str, n: int, workers: int, ca: str | None) -> tuple[Span, int]:
    from concurrent.futures import ThreadPoolExecutor

    pool, path = _pool(url, workers, ca)
    span = Span()
    with ThreadPoolExecutor(workers) as ex:

        def send(body: bytes) -> int:
            return int(pool.urlopen("POST", path, body=body, headers=HEADERS).status)

        [f.result() for f in _warm(lambda: ex.submit(send, b"{}"), workers)]
        span.start()
        futures = [ex.submit(send, _encode(d)) for d in records(n)]
        ok = sum(1 for f in futures if f.result() == 200)
        span.stop()
    pool.close()
    return span, ok


def run_urllib3_loop(url: str, n: int, workers: int, ca: str | None) -> tuple[Span, int]:
    pool, path = _pool(url, 1, ca)
    for _ in range(100):
        pool.urlopen("POST", path, body=b"{}", headers=HEADERS)
    span = Span()
    span.start()
    ok = 0
    for d in records(n):
        ok += pool.urlopen("POST", path, body=_encode(d), headers=HEADERS).status == 200
    span.stop()
    pool.close()
    return span, ok


def run_httpx(url: str, n: int, workers: int, ca: str | None) -> tuple[Span, int]:
    import ssl
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    verify: Any = ssl.create_default_context(cafile=ca) if ca else True
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    span = Span()
    with httpx.Client(verify=verify, limits=limits) as client, ThreadPoolExecutor(workers) as ex:

        def send(body: bytes) -> int:
            return client.post(url, content=body, headers=HEADERS).status_code

        [f.result() for f in _warm(lambda: ex.submit(send, b"{}"), workers)]
        span.start()
        futures = [ex.submit(send, _encode(d)) for d in records(n)]
        ok = sum(1 for f in futures if f.result() == 200)
        span.stop()
    return span, ok


def run_aiohttp(url: str, n: int, workers: int, ca: str | None, in_flight: int = 64) -> tuple[Span, int]:
    import asyncio
    import ssl

    import aiohttp

    async def main() -> tuple[Span, int]:
        ok = 0
        tls: Any = ssl.create_default_context(cafile=ca) if ca else True
        connector = aiohttp.TCPConnector(limit=in_flight, ssl=tls)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def post(body: bytes) -> int:
                async with session.post(url, data=body, headers=HEADERS) as resp:
                    await resp.read()
                    return resp.status

            await asyncio.gather(*(post(b"{}") for _ in range(in_flight * 2)))
            it = records(n)

            async def worker() -> None:
                nonlocal ok
                for d in it:  # the shared generator hands each record to one worker
                    status = await post(_encode(d))
                    ok += status == 200  # after the await: no increment is lost

            span = Span()
            span.start()
            await asyncio.gather(*(worker() for _ in range(in_flight)))
            span.stop()
            return span, ok

    return asyncio.run(main())


def run_pycurl(url: str, n: int, workers: int, ca: str | None) -> tuple[Span, int]:
    """libcurl's multi interface driving ``workers`` easy handles (C does the HTTP; no callbacks)."""
    import pycurl

    multi = pycurl.CurlMulti()
    handles = []
    for _ in range(workers):
        c = pycurl.Curl()
        c.setopt(pycurl.URL, url)
        # "Expect:" stops libcurl from asking for 100-continue (it only does for large bodies anyway).
        c.setopt(pycurl.HTTPHEADER, [f"{k}: {v}" for k, v in HEADERS.items()] + ["Expect:"])
        c.setopt(pycurl.WRITEFUNCTION, len)  # consume the body, keep nothing
        if ca:
            c.setopt(pycurl.CAINFO, ca)
        handles.append(c)

    def drive(bodies: Iterator[bytes]) -> int:
        free = list(handles)
        busy = 0
        ok = 0
        pending = True
        while pending or busy:
            while pending and free:
                body = next(bodies, None)
                if body is None:
                    pending = False
                    break
                c = free.pop()
                c.setopt(pycurl.POSTFIELDS, body)
                multi.add_handle(c)
                busy += 1
            while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                pass
            while True:
                queued, done, failed = multi.info_read()
                for c in done:
                    ok += c.getinfo(pycurl.RESPONSE_CODE) == 200
                # A failed transfer (its handle, errno, message) counts as not delivered.
                for c in [*done, *(f[0] for f in failed)]:
                    multi.remove_handle(c)
                    free.append(c)
                    busy -= 1
                if not queued:
                    break
            if busy:
                multi.select(1.0)
        return ok

    drive(b"{}" for _ in range(workers * 4))
    span = Span()
    span.start()
    ok = drive(_encode(d) for d in records(n))
    span.stop()
    for c in handles:
        c.close()
    multi.close()
    return span, ok


def run_raw_loop(url: str, n: int, workers: int, ca: str | None) -> tuple[Span, int]:
    """Issue 14's floor: 4 threads, each on one urllib3 connection, one ``sendall`` per request.

    urllib3 connects (and does TLS, verifying against ``ca``); each response is
    parsed by ``httptools`` (llhttp). No futures, no callbacks, no pool.
    """
    import httptools
    import urllib3
    from urllib3.connection import HTTPConnection, HTTPSConnection

    u = urllib3.util.parse_url(url)
    head = (
        f"POST {u.request_uri} HTTP/1.1\r\nHost: {u.host}:{u.port}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
        + "Content-Length: "
    ).encode("latin-1")

    class Exchange:
        """httptools protocol: notes the end of each response."""

        def __init__(self) -> None:
            self.done = False

        def on_message_complete(self) -> None:
            self.done = True

    def connect() -> Any:
        if u.scheme == "https":
            conn: Any = HTTPSConnection(u.host, u.port, cert_reqs="CERT_REQUIRED", ca_certs=ca)
        else:
            conn = HTTPConnection(u.host, u.port)
        conn.connect()
        return conn

    counts = [0] * RAW_LOOP_THREADS
    ready = threading.Barrier(RAW_LOOP_THREADS + 1)
    go = threading.Event()
    errors: list[BaseException] = []

    def loop(k: int) -> None:
        try:
            conn = connect()
            sock = conn.sock
            exchange = Exchange()
            parser = httptools.HttpResponseParser(exchange)
            buf = bytearray(65536)
            view = memoryview(buf)

            def send(body: bytes) -> bool:
                sock.sendall(b"%s%d\r\n\r\n%s" % (head, len(body), body))
                exchange.done = False
                while not exchange.done:
                    got = sock.recv_into(buf)
                    if not got:
                        raise ConnectionError("server closed the connection")
                    parser.feed_data(view[:got])
                return parser.get_status_code() == 200

            for _ in range(10):
                send(b"{}")
            ready.wait()
            go.wait()
            ok = 0
            for i in range(k, n, RAW_LOOP_THREADS):  # thread k sends records k, k+4, k+8...
                ok += send(_encode(make_record(i)))
            counts[k] = ok
            conn.close()
        except BaseException as exc:
            errors.append(exc)
            with contextlib.suppress(threading.BrokenBarrierError):
                ready.abort()

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(RAW_LOOP_THREADS)]
    for t in threads:
        t.start()
    span = Span()
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait()
    span.start()
    go.set()
    for t in threads:
        t.join()
    span.stop()
    if errors:
        raise errors[0]
    return span, sum(counts)


def _warm(send: Callable[[], Any], workers: int) -> list[Any]:
    # Open the connections and start the threads before timing: every client gets this.
    return [send() for _ in range(workers * 4)]


CLIENTS: dict[str, Callable[[str, int, int, str | None], tuple[Span, int]]] = {
    "connector": run_connector,
    "connector-batch100": run_connector_batched,
    "connector-put": run_connector_put,
    "requests-futures": run_requests_futures,
    "urllib3-pool+tpe": run_urllib3_pool,
    "urllib3-1-thread": run_urllib3_loop,
    "httpx+tpe": run_httpx,
    "aiohttp-64": run_aiohttp,
    "pycurl-multi": run_pycurl,
    "raw-loop-4": run_raw_loop,
}
# Workers each client runs with: None means --workers.
FIXED_WORKERS = {"urllib3-1-thread": 1, "aiohttp-64": 64, "raw-loop-4": RAW_LOOP_THREADS}
# The peers of the throughput table (connector-put is the put scenario's own client).
PEERS = [name for name in CLIENTS if name not in {"connector", "connector-put"}]


def child(args: argparse.Namespace) -> None:
    """One measurement in this fresh interpreter; one JSON line out."""
    if args.package_root:  # the package of another commit wins over this checkout's
        sys.path.insert(0, args.package_root)
    span, ok = CLIENTS[args.client](args.url, args.records, args.workers, args.ca)
    package = sys.modules.get("eventmesh_http_sink")
    print(
        json.dumps(
            {
                "client": args.client,
                "seconds": span.wall,
                "cpu_seconds": span.cpu,
                "delivered": ok,
                "rate": ok / span.wall,
                "cpu_per_record": span.cpu / max(ok, 1),
                "package": getattr(package, "__file__", None) or "",
                **EXTRA,
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--client", required=True, choices=sorted(CLIENTS))
    p.add_argument("--url", required=True)
    p.add_argument("--records", type=int, required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--ca", help="CA file to verify an https server against")
    p.add_argument("--package-root", help="import eventmesh_http_sink from this checkout")
    child(p.parse_args())


if __name__ == "__main__":
    main()
