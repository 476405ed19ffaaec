"""One connector per worker process, made on first use and closed before the process exits.

Worker programs fork (Celery's prefork pool, RQ's work horse): a connector is
process state, so the integrations keep it here, keyed by pid. A forked child
that asks for the connector gets its own, never the parent's.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

from eventmesh_http_sink import forksafe
from eventmesh_http_sink.config import HttpSinkConfig
from eventmesh_http_sink.connector import HttpSinkConnector
from eventmesh_http_sink.errors import ConfigError

if TYPE_CHECKING:
    import requests

    from eventmesh_http_sink.wire.transport import Transport

__all__ = ["ProcessConnector"]

_log = logging.getLogger("eventmesh_http_sink")


class ProcessConnector:
    """Holds the current process's connector for a config.

    Args:
        config: The :class:`HttpSinkConfig` each process's connector is built from.
        flush_timeout: Seconds :meth:`close` waits for pending records before they
            are reported as failed with :class:`SinkClosedError`.
        transport: Passed to :class:`HttpSinkConnector` (a ``requests.Session`` is
            given fresh pools in a forked child).
    """

    def __init__(
        self,
        config: HttpSinkConfig,
        flush_timeout: float = 30.0,
        transport: Transport | requests.Session | None = None,
    ) -> None:
        if not isinstance(config, HttpSinkConfig):
            raise ConfigError("config", f"must be an HttpSinkConfig, got {type(config).__name__}")
        if (
            isinstance(flush_timeout, bool)
            or not isinstance(flush_timeout, (int, float))
            or flush_timeout < 0
        ):
            raise ConfigError("flush_timeout", f"must be a number >= 0, got {flush_timeout!r}")
        self.config = config
        self.flush_timeout = float(flush_timeout)
        self._transport = transport
        self._lock = threading.Lock()
        self._pid = 0
        self._connector: HttpSinkConnector | None = None
        forksafe.register(self)

    def after_fork_in_child(self) -> None:
        """A parent thread may have been in :meth:`get` (holding the lock) at the fork."""
        forksafe.reinit(self._lock)

    def get(self) -> HttpSinkConnector:
        """This process's connector, made on first use (and again after a fork or a close)."""
        pid = os.getpid()
        with self._lock:
            connector = self._connector
            if connector is None or self._pid != pid or connector.closed:
                # An inherited connector is left alone: its records are the parent's.
                connector = self._connector = HttpSinkConnector(self.config, transport=self._transport)
                self._pid = pid
            return connector

    def current(self) -> HttpSinkConnector | None:
        """This process's connector if it has one, without making it."""
        with self._lock:
            if self._connector is not None and self._pid == os.getpid():
                return self._connector
            return None

    def flush(self) -> bool:
        """Wait up to ``flush_timeout`` for this process's pending records."""
        connector = self.current()
        if connector is None:
            return True
        done = connector.flush(self.flush_timeout)
        if not done:
            _log.warning("records still pending after flush_timeout (%ss)", self.flush_timeout)
        return done

    def close(self) -> None:
        """Flush and close this process's connector (records left at the timeout fail)."""
        with self._lock:
            connector = self._connector if self._pid == os.getpid() else None
            self._connector = None
        if connector is not None:
            connector.close(self.flush_timeout)
