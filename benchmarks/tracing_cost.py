"""What tracing costs: the connector with ``tracing`` off, on, and a git ref without the feature.

::

    python benchmarks/tracing_cost.py                     # 10,000 records, 5 rounds, vs main
    python benchmarks/tracing_cost.py --ref HEAD~3 --records 5000 --rounds 7

Each variant runs in a fresh interpreter (``--child``) against one loopback nginx
(the Python server when nginx is missing), alternating the order every round, and
reports wall seconds and CPU seconds (user + system of the child, all threads) of
the timed part; the table shows medians of records/s and CPU µs per record:

* ``ref``: the package at ``--ref`` (a detached ``git worktree``), which has no tracing;
* ``off``: this checkout, ``tracing=False`` (the default): what every user pays;
* ``on``: this checkout, ``tracing=True`` with the OpenTelemetry SDK, every span
  sampled and exported by a ``BatchSpanProcessor`` to an exporter that drops them
  (the cost of making, propagating and handing off a span, not of shipping it).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Not clients.py: importing it puts this checkout on sys.path, and the ref child must not see it.
from servers import nginx_path, start_nginx, start_python_server
from workload import Count, make_record, records

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("ref", "off", "on")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(url: str, n: int, workers: int, tracing: bool) -> dict[str, float]:
    from eventmesh_http_sink import ConnectRecord, HttpSinkConfig, HttpSinkConnector

    if tracing:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        class Drop(SpanExporter):
            def export(self, spans):  # type: ignore[no-untyped-def]
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=100_000))
        trace.set_tracer_provider(provider)
        options = {"tracing": True}
    else:
        options = {}
    callback = Count()
    with HttpSinkConnector(
        HttpSinkConfig(url, max_workers=workers, max_pending=max(10_000, n), **options)
    ) as sink:
        for i in range(workers * 4):  # warm-up: connections open, threads started
            sink.put(ConnectRecord(make_record(-i), callback=callback))
        sink.flush()
        callback.ok = 0
        t0, c0 = time.perf_counter(), _cpu()
        for data in records(n):
            sink.put(ConnectRecord(data, callback=callback))
        sink.flush()
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
    import eventmesh_http_sink

    return {"ok": callback.ok, "wall": wall, "cpu": cpu, "file": eventmesh_http_sink.__file__}


def run(variant: str, url: str, n: int, workers: int, ref_root: str) -> dict[str, float]:
    root = ref_root if variant == "ref" else str(ROOT)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--url",
        url,
        "--records",
        str(n),
        "--workers",
        str(workers),
    ]
    env_path = f"{Path(__file__).parent}:{root}"
    out = subprocess.run(
        cmd, check=True, capture_output=True, text=True, env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}
    ).stdout
    result = json.loads(out.splitlines()[-1])
    if not result["file"].startswith(root):
        raise RuntimeError(f"{variant} imported {result['file']}, not from {root}")
    if result["ok"] != n:
        raise RuntimeError(f"{variant}: {result['ok']} of {n} records delivered")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", default="main", help="the git ref without tracing")
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.url, args.records, args.workers, args.child == "on")))
        return
    server = start_nginx() if nginx_path() else start_python_server()
    ref_dir = tempfile.mkdtemp(prefix="emhs-tracing-ref-")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", ref_dir, args.ref], check=True)
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    try:
        url = f"http://127.0.0.1:{server.port}/events"
        print(f"{server.name} at {url}; {args.records} records, {args.workers} workers; ref {args.ref}")
        for i in range(args.rounds):
            order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                r = run(variant, url, args.records, args.workers, ref_dir)
                results[variant].append(r)
                rate, cpu_us = args.records / r["wall"], r["cpu"] / args.records * 1e6
                print(f"  round {i + 1}: {variant:4} {rate:8,.0f} records/s {cpu_us:7.1f} µs CPU/record")
    finally:
        server.stop()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", ref_dir], check=False)
    print(f"\n  {'variant':8} {'median rec/s':>13} {'CPU µs/record':>14} {'CPU vs ref':>11}")
    base = statistics.median(r["cpu"] for r in results["ref"])
    for variant in VARIANTS:
        rate = statistics.median(args.records / r["wall"] for r in results[variant])
        cpu = statistics.median(r["cpu"] for r in results[variant])
        print(f"  {variant:8} {rate:13,.0f} {cpu / args.records * 1e6:14.1f} {cpu / base:11.3f}")


if __name__ == "__main__":
    main()
