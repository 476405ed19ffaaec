"""Shared fixtures: real loopback servers and a callback that checks exactly-once."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from eventmesh_http_sink import (
    HttpSinkConfig,
    HttpSinkConnector,
    SendExceptionContext,
    SendResult,
)
from eventmesh_http_sink.testing import FaultServer


class Recorder:
    """A SendMessageCallback that remembers every call and flags a second one per record."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.successes: dict[str, SendResult] = {}
        self.failures: dict[str, SendExceptionContext] = {}
        self.calls: collections.Counter[str] = collections.Counter()
        self.threads: set[str] = set()
        self.done = threading.Event()

    def on_success(self, result: SendResult) -> None:
        with self.lock:
            self.calls[result.record_id] += 1
            self.successes[result.record_id] = result
            self.threads.add(threading.current_thread().name)

    def on_exception(self, context: SendExceptionContext) -> None:
        with self.lock:
            self.calls[context.record_id] += 1
            self.failures[context.record_id] = context
            self.threads.add(threading.current_thread().name)

    def assert_exactly_once(self, record_ids: list[str]) -> None:
        with self.lock:
            assert set(self.calls) == set(record_ids), "a record got no callback, or a stranger did"
            repeated = {k: n for k, n in self.calls.items() if n != 1}
            assert not repeated, f"records called back more than once: {repeated}"
            assert not set(self.successes) & set(self.failures)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def connector_factory() -> Iterator[Callable[..., HttpSinkConnector]]:
    """Builds connectors from config keywords and closes them all at teardown."""
    made: list[HttpSinkConnector] = []

    def make(urls: Any, transport: Any = None, **kwargs: Any) -> HttpSinkConnector:
        connector = HttpSinkConnector(HttpSinkConfig(urls, **kwargs), transport=transport)
        made.append(connector)
        return connector

    yield make
    for connector in made:
        connector.close(timeout=5)
