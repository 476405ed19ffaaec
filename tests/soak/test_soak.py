"""A steady load with 10% injected faults: RSS, threads and fds must stay flat.

Runs for EMHS_SOAK_SECONDS (default 300) and prints a line every 10 s.
"""

from __future__ import annotations

import os
import resource
import threading
import time

import pytest

from eventmesh_http_sink import ConnectRecord, HttpSinkConfig, HttpSinkConnector, RetryConfig
from eventmesh_http_sink.testing import FaultServer, RandomFaults, Reply

RATE = 500  # records per second
SECONDS = float(os.environ.get("EMHS_SOAK_SECONDS", "300"))


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.timeout(SECONDS + 180)  # the suite's 120 s per-test timeout is for unit tests
def test_soak_is_flat():
    seconds = SECONDS
    faults = RandomFaults(
        fail_rate=0.10, seed=7,
        faults=[Reply(503, headers={"Retry-After": "0"}), Reply(500), Reply.reset(), Reply(404)],
    )
    samples: list[tuple[float, float, int, int]] = []
    outcomes = {"ok": 0, "failed": 0}
    lock = threading.Lock()

    class Count:
        def on_success(self, result):
            with lock:
                outcomes["ok"] += 1

        def on_exception(self, context):
            with lock:
                outcomes["failed"] += 1

    callback = Count()
    with FaultServer(responder=faults, keep_log=False) as server:
        config = HttpSinkConfig(server.url, max_workers=8, max_pending=2000,
                                retry=RetryConfig(initial_backoff=0.01, max_backoff=0.1))
        with HttpSinkConnector(config) as sink:
            started = time.monotonic()
            next_report = started
            sent = 0
            while (now := time.monotonic()) - started < seconds:
                due = int((now - started) * RATE)
                while sent < due:
                    sink.put(ConnectRecord({"n": sent, "pad": "x" * 100}, callback=callback))
                    sent += 1
                if now >= next_report:
                    fds = len(os.listdir("/proc/self/fd"))
                    sample = (now - started, _rss_mb(), threading.active_count(), fds)
                    samples.append(sample)
                    print(f"t={sample[0]:6.1f}s rss={sample[1]:7.1f}MB threads={sample[2]} fds={sample[3]} "
                          f"ok={outcomes['ok']} failed={outcomes['failed']} stats={sink.stats().as_dict()}",
                          flush=True)
                    next_report += 10
                time.sleep(0.005)
            assert sink.flush(60)
            stats = sink.stats()
    assert stats.submitted == sent == outcomes["ok"] + outcomes["failed"]
    assert stats.callback_errors == 0
    # Flat after warm-up: compare the second sample with the last.
    assert len(samples) >= 3
    rss_warm, rss_end = samples[1][1], samples[-1][1]
    assert rss_end - rss_warm < 20, f"RSS grew {rss_warm:.1f} -> {rss_end:.1f} MB"
    # Threads and sockets may grow while the adaptive limit ramps up to max_workers,
    # but never past what the configuration allows: main + 8 workers + the retry
    # timer, and the in-process server's accept loop + one handler per connection.
    workers = config.max_workers
    assert max(t for _, _, t, _ in samples) <= 2 + workers + 1 + 1 + workers + 2
    assert max(f for _, _, _, f in samples) <= samples[0][3] + 2 * workers + 4  # two ends per connection
