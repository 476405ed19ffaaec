"""Side-by-side throughput of the connector and the clients users would pick instead.

Every client sends the same JSON records (~150 bytes, one POST each) to the same
loopback server; each run is a fresh interpreter (``python compare.py --client
NAME ...``), the clients alternate round after round, and the script prints the
median records/s of every client and the ratios the targets are stated in.

Scenarios (``--scenario``):

* ``zero``: a server answering at once (nginx if installed, else an asyncio
  server whose capacity is measured first). Connector vs requests-futures, bare
  ``urllib3.HTTPConnectionPool.urlopen`` + ThreadPoolExecutor, one thread urllib3
  loop, aiohttp with 64 in flight; all at ``--workers``.
* ``delay``: a server answering after 10 ms (a separate Python process, a thread
  per connection sleeping out the delay: precise to ~0.1 ms, where asyncio's
  timers fire up to 1 ms late).
  Connector at 16 and 64 workers vs the bare pool at 64 workers.
* ``memory``: 1,000,000 records (``--memory-records``) put as fast as possible with
  max_pending=10,000; peak RSS and RSS growth between 10% and 100% of the run.
* ``all``: zero + delay (memory is separate: it takes a minute or two).

Quick run: ``python benchmarks/compare.py --records 2000 --rounds 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workload import Count, make_record, records  # benchmarks/ is sys.path[0] for this script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run from a fresh clone without installing
    sys.path.insert(0, str(ROOT))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

HEADERS = {"Content-Type": "application/json"}
CLIENT_TIMEOUT = 600.0  # a single client run never takes longer than this


# -- clients: each runs in its own interpreter, returns (seconds, delivered) ---------------


def run_connector(url: str, n: int, workers: int) -> tuple[float, int]:
    from eventmesh_http_sink import ConnectRecord, HttpSinkConfig, HttpSinkConnector

    callback = Count()
    config = HttpSinkConfig(url, max_workers=workers, max_pending=max(10_000, n))
    with HttpSinkConnector(config) as sink:
        _warm(lambda: sink.put(ConnectRecord(make_record(-1), callback=callback)), workers)
        sink.flush()
        callback.ok = 0
        t0 = time.perf_counter()
        for data in records(n):
            sink.put(ConnectRecord(data, callback=callback))
        sink.flush()
        elapsed = time.perf_counter() - t0
    return elapsed, callback.ok


def run_requests_futures(url: str, n: int, workers: int) -> tuple[float, int]:
    from requests_futures.sessions import FuturesSession

    with FuturesSession(max_workers=workers) as session:
        [
            f.result()
            for f in _warm(
                lambda: session.post(url, data=json.dumps(make_record(-1)), headers=HEADERS), workers
            )
        ]
        t0 = time.perf_counter()
        futures = [
            session.post(url, data=json.dumps(d, separators=(",", ":")), headers=HEADERS) for d in records(n)
        ]
        ok = sum(1 for f in futures if f.result().status_code == 200)
        elapsed = time.perf_counter() - t0
    return elapsed, ok


def _pool(url: str, workers: int) -> Any:
    import urllib3

    u = urllib3.util.parse_url(url)
    return urllib3.HTTPConnectionPool(u.host, u.port, maxsize=workers, block=True), u.request_uri


def run_urllib3_pool(url: str, n: int, workers: int) -> tuple[float, int]:
    from concurrent.futures import ThreadPoolExecutor

    pool, path = _pool(url, workers)
    with ThreadPoolExecutor(workers) as ex:

        def send(body: bytes) -> int:
            return int(pool.urlopen("POST", path, body=body, headers=HEADERS).status)

        [f.result() for f in _warm(lambda: ex.submit(send, b"{}"), workers)]
        t0 = time.perf_counter()
        futures = [ex.submit(send, json.dumps(d, separators=(",", ":")).encode()) for d in records(n)]
        ok = sum(1 for f in futures if f.result() == 200)
        elapsed = time.perf_counter() - t0
    pool.close()
    return elapsed, ok


def run_urllib3_loop(url: str, n: int, workers: int) -> tuple[float, int]:
    pool, path = _pool(url, 1)
    for _ in range(100):
        pool.urlopen("POST", path, body=b"{}", headers=HEADERS)
    t0 = time.perf_counter()
    ok = 0
    for d in records(n):
        body = json.dumps(d, separators=(",", ":")).encode()
        ok += pool.urlopen("POST", path, body=body, headers=HEADERS).status == 200
    elapsed = time.perf_counter() - t0
    pool.close()
    return elapsed, ok


def run_aiohttp(url: str, n: int, workers: int, in_flight: int = 64) -> tuple[float, int]:
    import asyncio

    import aiohttp

    async def main() -> tuple[float, int]:
        ok = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as session:

            async def post(body: bytes) -> int:
                async with session.post(url, data=body, headers=HEADERS) as resp:
                    await resp.read()
                    return resp.status

            await asyncio.gather(*(post(b"{}") for _ in range(in_flight * 2)))
            it = records(n)

            async def worker() -> None:
                nonlocal ok
                for d in it:  # the shared generator hands each record to one worker
                    status = await post(json.dumps(d, separators=(",", ":")).encode())
                    ok += status == 200  # after the await: no increment is lost

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(in_flight)))
            return time.perf_counter() - t0, ok

    return asyncio.run(main())


def _warm(send: Callable[[], Any], workers: int) -> list[Any]:
    # Open the connections and start the threads before timing: every client gets this.
    return [send() for _ in range(workers * 4)]


CLIENTS: dict[str, Callable[[str, int, int], tuple[float, int]]] = {
    "connector": run_connector,
    "requests-futures": run_requests_futures,
    "urllib3-pool+tpe": run_urllib3_pool,
    "urllib3-1-thread": run_urllib3_loop,
    "aiohttp-64": run_aiohttp,
}


def run_client_subprocess(name: str, url: str, n: int, workers: int) -> dict[str, Any]:
    """Run one client in a fresh interpreter and return its measurement."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--client", name, "--url", url]
    cmd += ["--records", str(n), "--workers", str(workers)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"client {name} failed:\n{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["delivered"] != n:
        raise RuntimeError(f"client {name} delivered {result['delivered']} of {n}")
    return result


# -- scenarios -------------------------------------------------------------------------------


def _rounds(runs: list[tuple[str, str, int]], url: str, n: int, rounds: int) -> dict[str, list[float]]:
    """Alternate the runs ``rounds`` times; records/s per label."""
    rates: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    for r in range(rounds):
        order = runs if r % 2 == 0 else list(reversed(runs))  # no client always goes first
        for label, client, workers in order:
            res = run_client_subprocess(client, url, n, workers)
            rates[label].append(res["rate"])
            print(f"  round {r + 1}: {label:<28} {res['rate']:>9,.0f} records/s", flush=True)
    return rates


def _table(rates: dict[str, list[float]], base: str) -> dict[str, float]:
    med = {label: statistics.median(v) for label, v in rates.items()}
    print(f"\n  {'client':<28} {'median rec/s':>13} {'x ' + base:>24}")
    for label, m in med.items():
        print(f"  {label:<28} {m:>13,.0f} {m / med[base]:>24.2f}")
    return med


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def scenario_zero(args: argparse.Namespace) -> dict[str, Any]:
    from servers import start_fast_server, wrk_capacity

    w = args.workers
    with start_fast_server() as server:
        cap = wrk_capacity(server.url.replace("/events", "/"), connections=w)
        print(f"\n== zero latency: {server.name} at {server.url}; {args.records} records, {w} workers")
        if cap:
            print(f"  server capacity (wrk, {w} connections): {cap:,.0f} requests/s")
        runs = [
            ("connector", "connector", w),
            ("requests-futures", "requests-futures", w),
            ("urllib3-pool+tpe", "urllib3-pool+tpe", w),
            ("urllib3-1-thread", "urllib3-1-thread", 1),
            ("aiohttp-64", "aiohttp-64", 64),
        ]
        rates = _rounds(runs, server.url, args.records, args.rounds)
    med = _table(rates, "requests-futures")
    r_rf = med["connector"] / med["requests-futures"]
    r_pool = med["connector"] / med["urllib3-pool+tpe"]
    print(f"\n  target 1a: connector / requests-futures = {r_rf:.2f} (>= 3.0: {_met(r_rf >= 3)})")
    print(f"  target 1b: connector / urllib3 pool+TPE = {r_pool:.2f} (>= 1.0: {_met(r_pool >= 1)})")
    if cap:
        top = max(med.values())
        print(f"  server headroom: fastest client {top:,.0f}/s is {top / cap:.0%} of wrk's {cap:,.0f}/s")
    return {"server": server.name, "wrk": cap, "medians": med, "rounds": rates}


def scenario_delay(args: argparse.Namespace) -> dict[str, Any]:
    from servers import start_python_server, wrk_capacity

    delay = args.delay
    n = args.delay_records
    with start_python_server(delay, threaded=True) as server:
        print(f"\n== {delay * 1000:g} ms server: {server.name}; {n} records")
        cap16 = wrk_capacity(server.url, connections=16)
        cap = wrk_capacity(server.url, connections=64)
        if cap and cap16:
            print(
                f"  server capacity (wrk): {cap16:,.0f}/s at 16 connections"
                f" (ideal {16 / delay:,.0f}),",
                end="",
            )
            print(f" {cap:,.0f}/s at 64 (ideal {64 / delay:,.0f})")
        runs = [
            ("connector-16", "connector", 16),
            ("urllib3-pool+tpe-16", "urllib3-pool+tpe", 16),
            ("connector-64", "connector", 64),
            ("urllib3-pool+tpe-64", "urllib3-pool+tpe", 64),
        ]
        rates = _rounds(runs, server.url, n, args.rounds)
    med = _table(rates, "urllib3-pool+tpe-64")
    ideal = 16 / delay
    r16 = med["connector-16"] / ideal
    r64 = med["connector-64"] / med["urllib3-pool+tpe-64"]
    print(f"\n  target 2a: connector-16 = {r16:.0%} of 16/{delay:g}s = {ideal:,.0f}/s", end="")
    print(f" (>= 90%: {_met(r16 >= 0.9)})")
    print(f"  target 2b: connector-64 / pool+TPE-64 = {r64:.2f} (>= 1.0: {_met(r64 >= 1)})")
    return {"server": server.name, "wrk16": cap16, "wrk64": cap, "medians": med, "rounds": rates}


def scenario_memory(args: argparse.Namespace) -> dict[str, Any]:
    from servers import start_fast_server

    with start_fast_server() as server:
        print(f"\n== memory: {args.memory_records:,} records, max_pending=10,000, {server.name}")
        cmd = [sys.executable, str(HERE / "memory_run.py"), server.url, str(args.memory_records)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    for mark in res["samples"]:
        print(f"  after {mark['records']:>9,} records: RSS {mark['rss_mb']:.1f} MB")
    print(
        f"  peak RSS {res['peak_mb']:.1f} MB (< 120: {'met' if res['peak_mb'] < 120 else 'NOT met'}); "
        f"growth 10%->100%: {res['growth_mb']:+.1f} MB; {res['rate']:,.0f} records/s"
    )
    return res


def scenario_batch(args: argparse.Namespace) -> dict[str, Any]:
    import eventmesh_http_sink

    if not hasattr(eventmesh_http_sink, "BatchConfig"):
        print("\n== batching: not measurable on this branch (eventmesh_http_sink.BatchConfig does not exist)")
        return {"skipped": "no BatchConfig"}
    print("\n== batching: see benchmarks/test_bench.py::test_batched_throughput (pytest-benchmark)")
    return {"skipped": "measured by the pytest-benchmark suite"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="all", choices=["all", "zero", "delay", "memory", "batch"])
    p.add_argument("--records", type=int, default=10_000, help="records per run (zero latency)")
    p.add_argument("--delay-records", type=int, default=5_000, help="records per run (delay scenario)")
    p.add_argument("--memory-records", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--delay", type=float, default=0.010, help="seconds the delayed server waits")
    p.add_argument("--json", help="write the results to this file too")
    p.add_argument("--client", choices=sorted(CLIENTS), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.client:  # child mode: one measurement, one JSON line
        elapsed, ok = CLIENTS[args.client](args.url, args.records, args.workers)
        print(json.dumps({"client": args.client, "seconds": elapsed, "delivered": ok, "rate": ok / elapsed}))
        return

    import platform

    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    results: dict[str, Any] = {}
    if args.scenario in ("all", "zero"):
        results["zero"] = scenario_zero(args)
    if args.scenario in ("all", "delay"):
        results["delay"] = scenario_delay(args)
    if args.scenario in ("all", "batch"):
        results["batch"] = scenario_batch(args)
    if args.scenario == "memory":
        results["memory"] = scenario_memory(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
