"""What every benchmark sends and how it counts outcomes.

Shared by compare.py, memory_run.py and test_bench.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any


def make_record(i: int) -> dict[str, Any]:
    """A JSON object of ~150 bytes once encoded."""
    return {
        "id": i,
        "type": "order.created",
        "source": "/benchmarks",
        "time": 1764201600000 + i,
        "data": {"order": f"ORD-{i:08d}", "amount": 1234.5, "currency": "EUR", "items": 3},
    }


def records(n: int) -> Iterator[dict[str, Any]]:
    """``n`` records, made lazily."""
    return (make_record(i) for i in range(n))


class Count:
    """A SendMessageCallback counting outcomes (callbacks run on several worker threads)."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self._lock = threading.Lock()

    def on_success(self, result: Any) -> None:
        with self._lock:
            self.ok += 1

    def on_exception(self, context: Any) -> None:
        with self._lock:
            self.failed += 1
