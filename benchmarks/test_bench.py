"""The pytest-benchmark suite (``tox -e bench``; CI: ``pytest benchmarks --benchmark-disable``).

Against a loopback nginx when installed, else the asyncio server of
``servers.py``. Each benchmark also asserts that every record was delivered,
so the smoke run (``--benchmark-disable``: one pass each, small N) checks that
the measured paths work. Sizes grow with ``EMHS_BENCH_RECORDS`` (default 2,000;
1,000 in the smoke run).

Figures are reported, never asserted: the targets are judged from
``compare.py``'s side-by-side ratios (see README.md). In the smoke run,
``test_compare_runs_every_client`` also runs compare.py itself, tiny, so every
peer of the comparison is known to work over https and http.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clients import PEERS
from servers import ServerProcess, start_fast_server
from workload import Count, make_record

from eventmesh_http_sink import BatchConfig, ConnectRecord, HttpSinkConfig, HttpSinkConnector

HERE = Path(__file__).resolve().parent


def _records(request: pytest.FixtureRequest) -> int:
    disabled = request.config.getoption("benchmark_disable", default=False)
    return int(os.environ.get("EMHS_BENCH_RECORDS", "1000" if disabled else "2000"))


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with start_fast_server() as srv:
        yield srv


def test_put_latency(benchmark: Any, server: ServerProcess) -> None:
    """One ``put()`` call of a ready record, not blocked by backpressure (target: median < 20 µs).

    The endpoint answers at once and max_pending is far above what one round
    puts, so ``put`` never waits; the connector is flushed between rounds.
    """
    callback = Count()
    config = HttpSinkConfig(server.url, max_workers=16, max_pending=1_000_000)
    data = make_record(1)
    with HttpSinkConnector(config) as sink:
        sink.put(ConnectRecord(data, callback=callback))  # start threads and pools

        def new_record() -> tuple[tuple[ConnectRecord], dict[str, Any]]:
            # Building the record (its UUID, its validators) is the caller's work, not put()'s.
            return (ConnectRecord(data, callback=callback),), {}

        benchmark.pedantic(sink.put, setup=new_record, rounds=2000, warmup_rounds=100)
        assert sink.flush(60)
        assert callback.failed == 0
        assert callback.ok == sink.stats().succeeded


def _delivery_rate(config: HttpSinkConfig, n: int) -> float:
    """Records/s from the first put() to the last callback; every record must succeed."""
    callback = Count()
    with HttpSinkConnector(config) as sink:
        t0 = time.perf_counter()
        for i in range(n):
            sink.put(ConnectRecord(make_record(i), callback=callback))
        assert sink.flush(120)
        elapsed = time.perf_counter() - t0
    assert callback.ok == n, (callback.ok, callback.failed)
    return n / elapsed


def test_throughput_one_request_per_record(benchmark: Any, server: ServerProcess, request: Any) -> None:
    """End-to-end records/s, one POST per record, 16 workers (see compare.py for the ratios)."""
    n = _records(request)
    config = HttpSinkConfig(server.url, max_workers=16, max_pending=max(10_000, n))

    rate = benchmark.pedantic(_delivery_rate, args=(config, n), rounds=3, iterations=1)
    benchmark.extra_info["records"] = n
    benchmark.extra_info["records_per_s"] = round(rate)


def test_throughput_batched(benchmark: Any, server: ServerProcess, request: Any) -> None:
    """Records/s with 100 records per request (target: >= 100,000 records/s)."""
    n = _records(request) * 10
    config = HttpSinkConfig(
        server.url, max_workers=16, max_pending=max(10_000, n), batch=BatchConfig(max_records=100)
    )

    rate = benchmark.pedantic(_delivery_rate, args=(config, n), rounds=3, iterations=1)
    benchmark.extra_info["records_per_s"] = round(rate)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover - not Linux


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_memory_long_run(benchmark: Any, server: ServerProcess, request: Any) -> None:
    """RSS growth over a run of 10x N records with max_pending=1,000 (bounded by max_pending, not N).

    The full 1,000,000-record run with max_pending=10,000 is
    ``python benchmarks/compare.py --scenario memory`` (a minute or two).
    """
    n = _records(request) * 10
    config = HttpSinkConfig(server.url, max_workers=16, max_pending=1_000)
    samples: list[float] = []

    def run() -> None:
        callback = Count()
        with HttpSinkConnector(config) as sink:
            for i in range(n):
                sink.put(ConnectRecord(make_record(i), callback=callback))
                if (i + 1) % (n // 5) == 0:
                    gc.collect()
                    samples.append(_rss_mb())
            assert sink.flush(300)
        assert callback.ok == n, (callback.ok, callback.failed)

    benchmark.pedantic(run, rounds=1, iterations=1)
    growth = samples[-1] - samples[0]
    benchmark.extra_info["rss_mb_samples"] = [round(s, 1) for s in samples]
    benchmark.extra_info["rss_growth_mb"] = round(growth, 1)
    print(f"\nRSS samples (MB) every {n // 5} records: {[round(s, 1) for s in samples]}")


def test_compare_runs_every_client(request: Any) -> None:
    """compare.py's harness, tiny: every client delivers every record over https and http.

    Proves each peer still runs (and verifies TLS against the run's throw-away
    CA) so a real run in a quiet window does not die half-way. One round, 100
    records, no wrk: a few seconds, no figure worth reading.
    """
    if not request.config.getoption("benchmark_disable", default=False):
        pytest.skip("the harness smoke check runs with --benchmark-disable (the CI smoke run)")
    cmd = [sys.executable, str(HERE / "compare.py"), "--scenario", "https,http", "--records", "100"]
    cmd += ["--rounds", "1", "--wrk-seconds", "0"]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for scenario in ("https", "http"):
        section = out.stdout.split(f"== {scenario},", 1)[1].split("\n==", 1)[0]
        for peer in PEERS:
            assert f"\n  {peer} " in section, f"{peer} missing from the {scenario} table:\n{section}"
        assert "connector / raw-loop-4 = " in section
