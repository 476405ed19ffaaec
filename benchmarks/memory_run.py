"""Memory of a long run: ``python benchmarks/memory_run.py URL [N]`` (one JSON line out).

Puts N records (default 1,000,000) as fast as ``put`` accepts them with
max_pending=10,000, sampling RSS every 10% of the run. The bound on memory is
max_pending, not N: RSS at 100% should equal RSS at 10%. Stops early (and says
so) after ``--max-seconds``.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workload import Count  # benchmarks/ is sys.path[0] for this script

from eventmesh_http_sink import ConnectRecord, HttpSinkConfig, HttpSinkConnector


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB, from /proc."""
    fields = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def main() -> None:
    url = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    max_seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 900.0
    step = max(1, n // 10)
    callback = Count()
    samples = []
    t0 = time.perf_counter()
    put = 0
    config = HttpSinkConfig(url, max_workers=16, max_pending=10_000)
    with HttpSinkConnector(config) as sink:
        for i in range(n):
            sink.put(
                ConnectRecord(
                    {
                        "id": i,
                        "type": "order.created",
                        "source": "/benchmarks/memory",
                        "data": {"order": f"ORD-{i:08d}", "amount": 1234.5, "currency": "EUR"},
                    },
                    {"topic": "orders"},
                    callback=callback,
                )
            )
            put = i + 1
            if put % step == 0:
                gc.collect()
                samples.append({"records": put, "rss_mb": rss_mb()[0], "seconds": time.perf_counter() - t0})
                if time.perf_counter() - t0 > max_seconds:
                    break
        sink.flush()
    elapsed = time.perf_counter() - t0
    # VmHWM is updated lazily by the kernel: the peak is the larger of it and the samples.
    peak = max([rss_mb()[1]] + [m["rss_mb"] for m in samples])
    print(
        json.dumps(
            {
                "records": put,
                "complete": put == n,
                "ok": callback.ok,
                "failed": callback.failed,
                "rate": put / elapsed,
                "peak_mb": peak,
                "samples": samples,
                "growth_mb": samples[-1]["rss_mb"] - samples[0]["rss_mb"] if samples else 0.0,
            }
        )
    )


if __name__ == "__main__":
    main()
