"""No feature gets slower (issue 14): the connector with one optional feature on, this checkout vs a ref.

``python benchmarks/features_ab.py --against-ref main --rounds 3``

For each feature (broadcast to two URLs of the same nginx, batches of 100,
the result store, dead letters to a file, a rate limit far above the rate,
Standard Webhooks signing), fresh interpreters run ``compare.py``'s connector
workload (``put`` + counting callback + ``flush``) with that feature on,
alternating this checkout and ``--against-ref`` round after round; prints the
median records/s and CPU µs per record of each and their ratio.
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
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

FEATURES = ["broadcast", "batch100", "result_store", "dead_letter", "rate_limit", "signing"]


def child(args: argparse.Namespace) -> None:
    """One measured run in this interpreter (package from ``--package-root``)."""
    if args.package_root:
        sys.path.insert(0, args.package_root)
    else:
        sys.path.insert(1, str(ROOT))
    from workload import Count, make_record

    import eventmesh_http_sink as m

    opts: dict[str, Any] = {}
    urls: Any = args.url
    tmp = tempfile.mkdtemp(prefix="emhs-feat-")
    if args.feature == "broadcast":
        urls = [args.url, args.url.replace("/events", "/events2")]
        opts["delivery_strategy"] = "broadcast"
    elif args.feature == "batch100":
        opts["batch"] = m.BatchConfig(max_records=100)
    elif args.feature == "result_store":
        opts["result_store"] = m.ResultStoreConfig(max_size=1000)
    elif args.feature == "dead_letter":
        opts["dead_letter"] = f"{tmp}/dead.jsonl"
    elif args.feature == "rate_limit":
        opts["rate_limit"] = 1_000_000.0
    elif args.feature == "signing":
        opts["signing"] = m.WebhookSigner("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    n = args.records
    cb = Count()
    config = m.HttpSinkConfig(urls, max_workers=16, max_pending=max(10_000, n), **opts)
    with m.HttpSinkConnector(config) as sink:
        for i in range(500):
            sink.put(m.ConnectRecord(make_record(-i), callback=cb))
        sink.flush()
        cb.ok = 0
        u0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for i in range(n):
            sink.put(m.ConnectRecord(make_record(i), callback=cb))
        sink.flush()
        wall = time.perf_counter() - t0
        u1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (u1.ru_utime + u1.ru_stime) - (u0.ru_utime + u0.ru_stime)
    print(
        json.dumps(
            {
                "ok": cb.ok,
                "failed": cb.failed,
                "rate": cb.ok / wall,
                "cpu_us": cpu / max(cb.ok, 1) * 1e6,
                "package": m.__file__,
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against-ref", default="main")
    p.add_argument("--features", default=",".join(FEATURES))
    p.add_argument("--records", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--feature", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--package-root", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    from compare import ref_checkout
    from servers import start_fast_server

    with ref_checkout(args.against_ref) as ref, start_fast_server() as server:
        assert ref is not None
        for feature in args.features.split(","):
            roots = {"this": None, f"@{ref[0]}": ref[1]}
            res: dict[str, list[dict[str, Any]]] = {k: [] for k in roots}
            for r in range(args.rounds):
                for label in list(roots) if r % 2 == 0 else list(roots)[::-1]:
                    cmd = [
                        sys.executable,
                        __file__,
                        "--child",
                        "--feature",
                        feature,
                        "--url",
                        server.url,
                        "--records",
                        str(args.records),
                    ]
                    if roots[label]:
                        cmd += ["--package-root", str(roots[label])]
                    out = subprocess.run(
                        cmd, capture_output=True, text=True, check=True, cwd=ROOT, timeout=600
                    )
                    got = json.loads(out.stdout.strip().splitlines()[-1])
                    if got["ok"] != args.records:
                        raise RuntimeError(f"{feature} {label}: {got}")
                    res[label].append(got)
            rate = {k: statistics.median(g["rate"] for g in v) for k, v in res.items()}
            cpu = {k: statistics.median(g["cpu_us"] for g in v) for k, v in res.items()}
            a, b = list(roots)
            print(
                f"{feature:<13} this {rate[a]:>7,.0f} rec/s {cpu[a]:>6.1f} µs | {b} {rate[b]:>7,.0f} rec/s"
                f" {cpu[b]:>6.1f} µs | x{rate[a] / rate[b]:.2f}, CPU x{cpu[a] / cpu[b]:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
