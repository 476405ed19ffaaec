"""Side-by-side throughput of the connector and the clients users would pick instead.

Every client (:mod:`clients`) sends the same JSON records (~150 bytes, one POST
each) to the same loopback server; each run is a fresh interpreter (``python
clients.py --client NAME ...``), the clients alternate round after round (every
other round in reverse order), and the script prints the median records/s of
every client, the connector's ratio to each of them, and the CPU seconds each
spent per delivered record (user + system, from the child's own ``getrusage``
over the timed part).

Scenarios (``--scenario``, comma-separated; ``all`` = https,http,delay):

* ``https``: nginx with a certificate from a throw-away CA made at run time
  (``trustme``); every client verifies against that CA.
* ``http``: the same nginx, plain (an asyncio server when nginx is missing).
* ``delay``: a server answering after 10 ms (a separate Python process, a thread
  per connection sleeping out the delay). Connector at 16 and 64 workers vs the
  bare pool at 16 and 64.
* ``memory``: 1,000,000 records (``--memory-records``) put as fast as possible with
  max_pending=10,000; peak RSS and RSS growth between 10% and 100% of the run.

Clients of ``https`` and ``http`` (``--clients``, comma-separated; the connector
always runs): see ``clients.CLIENTS``. ``--against-ref REF`` adds ``connector@REF``: the
same client code importing the package from a ``git worktree`` of REF (via
PYTHONPATH in the child), to measure a change against the commit before it in
one run.

Quick run: ``python benchmarks/compare.py --records 2000 --rounds 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from clients import FIXED_WORKERS, PEERS  # noqa: E402 - benchmarks/ is on sys.path just above

CLIENT_TIMEOUT = 600.0  # a single client run never takes longer than this


class Run(NamedTuple):
    """One column of a comparison: a label, the client it runs, its workers, the package it imports."""

    label: str
    client: str
    workers: int
    package_root: str | None = None  # None: this checkout


def run_client_subprocess(run: Run, url: str, n: int, ca: str | None) -> dict[str, Any]:
    """Run one client in a fresh interpreter and return its measurement."""
    cmd = [sys.executable, str(HERE / "clients.py"), "--client", run.client, "--url", url]
    cmd += ["--records", str(n), "--workers", str(run.workers)]
    if ca:
        cmd += ["--ca", ca]
    if run.package_root:
        cmd += ["--package-root", run.package_root]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"client {run.label} failed:\n{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["delivered"] != n:
        raise RuntimeError(f"client {run.label} delivered {result['delivered']} of {n}")
    if run.package_root and not result["package"].startswith(run.package_root):
        raise RuntimeError(f"{run.label} imported {result['package']}, not the package in {run.package_root}")
    return result


# -- scenarios -------------------------------------------------------------------------------


def _rounds(
    runs: list[Run], url: str, n: int, rounds: int, ca: str | None
) -> dict[str, list[dict[str, Any]]]:
    """Alternate the runs ``rounds`` times; the measurements per label."""
    results: dict[str, list[dict[str, Any]]] = {run.label: [] for run in runs}
    for r in range(rounds):
        order = runs if r % 2 == 0 else list(reversed(runs))  # no client always goes first
        for run in order:
            res = run_client_subprocess(run, url, n, ca)
            results[run.label].append(res)
            print(
                f"  round {r + 1}: {run.label:<26} {res['rate']:>9,.0f} records/s"
                f" {res['cpu_per_record'] * 1e6:>8.1f} µs CPU/record",
                flush=True,
            )
    return results


def _medians(results: dict[str, list[dict[str, Any]]], key: str) -> dict[str, float]:
    return {label: statistics.median(r[key] for r in rs) for label, rs in results.items()}


def _table(results: dict[str, list[dict[str, Any]]], base: str) -> tuple[dict[str, float], dict[str, float]]:
    """Print median records/s, ``base`` / client, CPU per record; return the two medians."""
    rate = _medians(results, "rate")
    cpu = _medians(results, "cpu_per_record")
    print(f"\n  {'client':<26} {'median rec/s':>13} {base + ' / client':>22} {'CPU µs/record':>14}")
    for label in results:
        print(
            f"  {label:<26} {rate[label]:>13,.0f} {rate[base] / rate[label]:>22.2f} {cpu[label] * 1e6:>14.1f}"
        )
    return rate, cpu


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


# (scenario, issue, peer, lowest connector/peer ratio): the speed targets stated in the issues.
RATE_TARGETS = [
    ("https", "issue 11", "urllib3-pool+tpe", 2.0),
    ("https", "issue 11", "aiohttp-64", 0.8),
    ("https", "issue 14", "raw-loop-4", 0.5),
    ("https", "issue 14", "aiohttp-64", 2.0),
    ("http", "issue 14", "raw-loop-4", 0.5),
    ("http", "issue 14", "aiohttp-64", 2.0),
    ("http", "earlier", "requests-futures", 3.0),
    ("http", "earlier", "urllib3-pool+tpe", 1.0),
]


def _targets(scenario: str, rate: dict[str, float], cpu: dict[str, float], ref_label: str | None) -> None:
    print()
    for where, issue, peer, bound in RATE_TARGETS:
        if where == scenario and peer in rate:
            r = rate["connector"] / rate[peer]
            print(f"  {issue}: connector / {peer} = {r:.2f} (>= {bound:g}: {_met(r >= bound)})")
    if "raw-loop-4" in cpu:
        r = cpu["connector"] / cpu["raw-loop-4"]
        print(f"  issue 14: connector CPU per record / raw-loop-4's = {r:.2f} (<= 3: {_met(r <= 3)})")
    if ref_label and ref_label in cpu:
        r = cpu["connector"] / cpu[ref_label]
        print(f"  connector CPU per record / {ref_label}'s = {r:.2f} (lower is cheaper)")
    if "connector-batch100" in rate:
        b = rate["connector-batch100"]
        print(
            f"  issue 14: connector-batch100 = {b:,.0f} records/s = {b / 100_000:.2f} of 100,000"
            f" (>= 100,000: {_met(b >= 100_000)})"
        )
    if ref_label and ref_label in rate:
        r = rate["connector"] / rate[ref_label]
        print(
            f"  issue 11: connector / {ref_label} = {r:.2f}"
            f" (no regression: >= 1.0, {_met(r >= 1)}; mind the noise)"
        )


def scenario_zero(args: argparse.Namespace, *, tls: bool, ref: tuple[str, str] | None) -> dict[str, Any]:
    """The zero-latency comparison over https (``tls``) or plain http."""
    from servers import start_fast_server, wrk_capacity

    w = args.workers
    name = "https" if tls else "http"
    with start_fast_server(tls=tls) as server:
        cap = wrk_capacity(server.url.replace("/events", "/"), connections=w, seconds=args.wrk_seconds)
        print(
            f"\n== {name}, zero latency: {server.name} at {server.url}; {args.records} records, {w} workers"
        )
        if cap:
            print(f"  server capacity (wrk, {w} connections): {cap:,.0f} requests/s")
        runs = [Run("connector", "connector", w)]
        ref_label = None
        if ref is not None:
            ref_label = f"connector@{ref[0]}"
            runs.append(Run(ref_label, "connector", w, ref[1]))
        runs += [Run(p, p, FIXED_WORKERS.get(p, w)) for p in args.clients]
        results = _rounds(runs, server.url, args.records, args.rounds, server.ca_file)
    rate, cpu = _table(results, "connector")
    _targets(name, rate, cpu, ref_label)
    if cap:
        top = max(rate.values())
        print(f"  server headroom: fastest client {top:,.0f}/s is {top / cap:.0%} of wrk's {cap:,.0f}/s")
    return {"server": server.name, "wrk": cap, "rate": rate, "cpu_per_record": cpu, "rounds": results}


def scenario_delay(args: argparse.Namespace) -> dict[str, Any]:
    from servers import start_python_server, wrk_capacity

    delay = args.delay
    n = args.delay_records
    with start_python_server(delay, threaded=True) as server:
        print(f"\n== {delay * 1000:g} ms server: {server.name}; {n} records")
        cap16 = wrk_capacity(server.url, connections=16, seconds=args.wrk_seconds)
        cap = wrk_capacity(server.url, connections=64, seconds=args.wrk_seconds)
        if cap and cap16:
            print(
                f"  server capacity (wrk): {cap16:,.0f}/s at 16 connections (ideal {16 / delay:,.0f}),",
                end="",
            )
            print(f" {cap:,.0f}/s at 64 (ideal {64 / delay:,.0f})")
        runs = [
            Run("connector-16", "connector", 16),
            Run("urllib3-pool+tpe-16", "urllib3-pool+tpe", 16),
            Run("connector-64", "connector", 64),
            Run("urllib3-pool+tpe-64", "urllib3-pool+tpe", 64),
        ]
        results = _rounds(runs, server.url, n, args.rounds, None)
    rate, cpu = _table(results, "connector-64")
    ideal = 16 / delay
    r16 = rate["connector-16"] / ideal
    r64 = rate["connector-64"] / rate["urllib3-pool+tpe-64"]
    print(
        f"\n  target 2a: connector-16 = {r16:.0%} of 16/{delay:g}s = {ideal:,.0f}/s"
        f" (>= 90%: {_met(r16 >= 0.9)})"
    )
    print(f"  target 2b: connector-64 / pool+TPE-64 = {r64:.2f} (>= 1.0: {_met(r64 >= 1)})")
    return {"server": server.name, "wrk16": cap16, "wrk64": cap, "rate": rate, "cpu_per_record": cpu}


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
        f"  issue 14: peak RSS {res['peak_mb']:.1f} MB = {res['peak_mb'] / 120:.2f} of 120 MB"
        f" (< 120: {_met(res['peak_mb'] < 120)}); "
        f"growth 10%->100%: {res['growth_mb']:+.1f} MB; {res['rate']:,.0f} records/s"
    )
    return res


def scenario_put(args: argparse.Namespace, ref: tuple[str, str] | None) -> dict[str, Any]:
    """``put()`` of a ready record, call by call (``clients.run_connector_put``), over http."""
    from servers import start_fast_server

    w = args.workers
    n = args.put_records
    with start_fast_server() as server:
        print(f"\n== put(): {server.name}; {n} records, {w} workers sending meanwhile")
        runs = [Run("connector-put", "connector-put", w)]
        if ref is not None:
            runs.append(Run(f"connector-put@{ref[0]}", "connector-put", w, ref[1]))
        results = _rounds(runs, server.url, n, args.rounds, None)
    medians = {label: statistics.median(r["put_median_us"] for r in rs) for label, rs in results.items()}
    for label, rs in results.items():
        p90 = statistics.median(r["put_p90_us"] for r in rs)
        overhead = statistics.median(r["timer_overhead_us"] for r in rs)
        print(
            f"  {label:<26} put() median {medians[label]:.2f} µs (p90 {p90:.2f} µs;"
            f" timer overhead {overhead:.2f} µs, included)"
        )
    mine = medians["connector-put"]
    print(f"  issue 14: put() median {mine:.2f} µs = {mine / 4:.2f} of 4 µs (<= 4 µs: {_met(mine <= 4)})")
    if ref is not None:
        other = medians[f"connector-put@{ref[0]}"]
        print(f"  put() median / {ref[0]}'s = {mine / other:.2f} (lower is faster)")
    return {"put_median_us": medians, "rounds": results}


@contextlib.contextmanager
def ref_checkout(ref: str | None) -> Iterator[tuple[str, str] | None]:
    """A detached ``git worktree`` of ``ref`` for the length of the run: ``(ref, its root)``."""
    if ref is None:
        yield None
        return
    git = shutil.which("git")
    if git is None:
        raise RuntimeError("--against-ref needs git")
    sha = subprocess.run(
        [git, "-C", str(ROOT), "rev-parse", "--short", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = tempfile.mkdtemp(prefix=f"emhs-ref-{sha}-")
    subprocess.run([git, "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", path, sha], check=True)
    print(f"against {ref} ({sha}): the connector imported from a worktree at {path}")
    try:
        yield ref, path
    finally:
        subprocess.run([git, "-C", str(ROOT), "worktree", "remove", "--force", path], check=False)
        shutil.rmtree(path, ignore_errors=True)


def _names(text: str, allowed: list[str], what: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--scenario", default="all", help="https,http,delay,memory,put or all (= https,http,delay)"
    )
    p.add_argument("--clients", default=",".join(PEERS), help=f"peers of the connector: {','.join(PEERS)}")
    p.add_argument("--against-ref", metavar="GIT_REF", help="also run the connector of this commit")
    p.add_argument("--records", type=int, default=10_000, help="records per run (https, http)")
    p.add_argument("--delay-records", type=int, default=5_000, help="records per run (delay scenario)")
    p.add_argument("--memory-records", type=int, default=1_000_000)
    p.add_argument("--put-records", type=int, default=20_000, help="timed put() calls per run (put scenario)")
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--delay", type=float, default=0.010, help="seconds the delayed server waits")
    p.add_argument(
        "--wrk-seconds", type=float, default=3.0, help="server capacity check with wrk; 0 skips it"
    )
    p.add_argument("--json", help="write the results to this file too")
    args = p.parse_args()

    scenarios = ["https", "http", "delay"] if args.scenario == "all" else []
    scenarios = scenarios or _names(args.scenario, ["https", "http", "delay", "memory", "put"], "scenario")
    args.clients = _names(args.clients, PEERS, "client")

    import platform

    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    results: dict[str, Any] = {}
    with ref_checkout(args.against_ref) as ref:
        for name in scenarios:
            if name in ("https", "http"):
                results[name] = scenario_zero(args, tls=name == "https", ref=ref)
            elif name == "delay":
                results[name] = scenario_delay(args)
            elif name == "put":
                results[name] = scenario_put(args, ref)
            else:
                results[name] = scenario_memory(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
