"""Everything a connector owns in one process, and what happens to it at fork and at exit.

:class:`Runtime` is built on first use in each process: the transport, the
resolver and its ledger, the dispatcher (queue, worker loops, thread pool,
batcher, timers), the optional features' hooks, the metrics and the failure
log. It knows how to flush, how to close by a deadline, and how to take a
stats snapshot.

:class:`ProcessRuntime` is the connector's handle on it: the lifecycle state
(new, open, closed) and the runtime of the current process. A child forked
from a process with a runtime starts with no threads: its handle forgets the
parent's runtime (keeping it referenced, never collected: collecting it would
run its executor's weakref callback on a queue whose lock a parent thread may
have held at the fork) and builds a fresh one on first use. The parent's
records stay the parent's.

An unclosed connector is closed at interpreter exit with ``exit_timeout``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from eventmesh_http_sink.dispatch.dispatcher import Dispatcher
from eventmesh_http_sink.errors import SinkClosedError
from eventmesh_http_sink.metrics import Metrics
from eventmesh_http_sink.outcomes.failure_log import FailureLog
from eventmesh_http_sink.outcomes.hooks import Hooks
from eventmesh_http_sink.outcomes.resolver import Resolver, closed_error
from eventmesh_http_sink.stats import SinkStats
from eventmesh_http_sink.wire.transport import reset_session_pools_after_fork

if TYPE_CHECKING:
    from eventmesh_http_sink.config import HttpSinkConfig
    from eventmesh_http_sink.dispatch.strategies import Strategy
    from eventmesh_http_sink.dispatch.unit import Unit
    from eventmesh_http_sink.outcomes.result_store import ResultStore
    from eventmesh_http_sink.scheduling.retry import RetryPolicy
    from eventmesh_http_sink.tracing import AttemptTracer
    from eventmesh_http_sink.wire.request_options import RequestOptions
    from eventmesh_http_sink.wire.transport import Transport

__all__ = ["CLOSED", "NEW", "OPEN", "ProcessRuntime", "Runtime"]

_log = logging.getLogger("eventmesh_http_sink")
NEW, OPEN, CLOSED = "new", "open", "closed"


class Runtime:
    """The per-process part of a connector (see the module docstring)."""

    def __init__(
        self,
        config: HttpSinkConfig,
        transport: Transport,
        *,
        store: ResultStore | None,
        strategy: Strategy,
        options: RequestOptions,
        policy: RetryPolicy,
        base_headers: dict[str, str],
        tracer: AttemptTracer | None = None,
    ) -> None:
        self.pid = os.getpid()
        self.transport = transport
        self.metrics = Metrics()
        self.failures = FailureLog(_log)
        self.hooks = Hooks(config, store)
        self.resolver = Resolver(self.hooks, self.metrics, self.failures)
        self.dispatcher = Dispatcher(
            config,
            transport,
            self.resolver,
            hooks=self.hooks,
            strategy=strategy,
            options=options,
            policy=policy,
            base_headers=base_headers,
            tracer=tracer,
        )

    def submit(self, unit: Unit, max_pending: int, wait: float | None, closed: Callable[[], bool]) -> None:
        """Take a slot for a new record and hand it on (raises only the refusals of ``put``)."""
        self.resolver.admit(unit, max_pending, wait, closed)
        self.dispatcher.dispatch(unit)  # never raises: a record that cannot go is resolved

    def flush(self, timeout: float | None) -> bool:
        """Send partial batches, then wait until nothing is pending."""
        self.dispatcher.drain_batches()
        return self.resolver.wait_idle(timeout)

    def close(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` for pending records, then cancel the rest and stop everything.

        At the deadline: no attempt starts; every record still pending and not
        in its callback is claimed and gets ``SinkClosedError``; requests on the
        wire are aborted; the cancelled records' callbacks run spread over the
        pool's threads. Returns when every callback has returned.
        """
        resolver = self.resolver
        dispatcher = self.dispatcher
        resolver.wake_blocked()  # blocked put() calls now raise SinkClosedError
        cancelled = not self.flush(timeout)
        if cancelled:
            dispatcher.stop_attempts()
            units = resolver.claim_all()  # from here a late response reports nothing
            dispatcher.stop_timers()
            self.transport.abort()  # requests still on the wire: shut their sockets
            dispatcher.abandon_in_flight()
            jobs = [_finisher(resolver, unit) for unit in units]
            dispatcher.run_on_pool(jobs)
            resolver.wait_idle(None)  # every callback has returned
        else:
            dispatcher.stop_timers()
        self.hooks.close()
        self.failures.close()  # the last summary line
        dispatcher.shutdown(wait=not cancelled)
        self.transport.close()

    def stats(self) -> SinkStats:
        """A consistent snapshot of the counters and the metrics."""
        resolver = self.resolver
        dispatcher = self.dispatcher
        with resolver.lock:
            counters = (
                resolver.submitted,
                resolver.succeeded,
                resolver.failed,
                resolver.retried,
                resolver.pending,
                dispatcher.in_flight,
                resolver.callback_errors,
                len(dispatcher.retries),
            )
            # The ledger and the metrics share this lock: one round reads both, so the
            # per-URL rows and failure kinds count exactly the finished records above.
            per_url, retries, failures, latency = self.metrics.snapshot_held()
            extra = self.hooks.stats()
            extra["waiting"] = len(dispatcher.waits)
        breaker = self.hooks.breaker
        return SinkStats(
            *counters,
            **extra,
            per_url=per_url,
            retries_by_cause=retries,
            failures_by_kind=failures,
            latency_p50=latency.percentile(0.50),
            latency_p95=latency.percentile(0.95),
            latency_p99=latency.percentile(0.99),
            latency=latency,
            breaker=breaker.states() if breaker is not None else {},
            reconnects=getattr(self.transport, "reconnects", 0),  # a custom transport may not count them
        )


def _finisher(resolver: Resolver, unit: Unit) -> Callable[[], None]:
    return lambda: resolver.finish(unit, closed_error(unit))


class ProcessRuntime:
    """A connector's lifecycle state and its :class:`Runtime` in the current process.

    Args:
        build: Makes a fresh runtime (called in each process on first use). Bound
            methods are held weakly here, so the handle never keeps its connector alive.
        session: The caller's ``requests.Session``, if any: a forked child drops
            its copies of the parent's pooled sockets.
        close_at_exit: Called at interpreter exit when still open (held like ``build``).
    """

    def __init__(
        self,
        build: Callable[[], Runtime],
        *,
        session: object | None = None,
        close_at_exit: Callable[[], None] | None = None,
    ) -> None:
        self._build = _weakly(build)
        self._session = session
        self._close_at_exit = None if close_at_exit is None else _weakly(close_at_exit)
        self._lock = threading.Lock()
        self._state = NEW
        self._rt: Runtime | None = None
        _HANDLES.add(self)

    @property
    def state(self) -> str:
        """``"new"``, ``"open"`` or ``"closed"``."""
        return self._state

    def open(self, refused: str = "the connector is closed") -> Runtime:
        """The runtime of this process, built on first use.

        Raises:
            SinkClosedError: ``refused``, when closed.
        """
        with self._lock:
            if self._state == CLOSED:
                raise SinkClosedError(refused)
            rt = self._rt
            if rt is None or rt.pid != os.getpid():
                build = self._build()
                if build is None:  # defensive: only the connector calls open(), so it is alive
                    raise SinkClosedError(refused)
                rt = self._rt = build()
                self._state = OPEN
            return rt

    def current(self) -> Runtime | None:
        """The runtime of this process, or ``None`` (never used here)."""
        rt = self._rt
        return rt if rt is not None and rt.pid == os.getpid() else None

    def close(self) -> Runtime | None:
        """Mark closed; the runtime to close, or ``None`` (already closed, or none here)."""
        with self._lock:
            if self._state == CLOSED:
                return None
            self._state = CLOSED
        return self.current()

    def _after_fork_in_child(self, reset_sessions: set[int]) -> None:
        if self._rt is not None:
            _INHERITED.append(self._rt)
            self._rt = None
        self._lock = threading.Lock()
        if self._state == OPEN:
            self._state = NEW
        session = self._session
        if session is not None and id(session) not in reset_sessions:
            reset_sessions.add(id(session))
            reset_session_pools_after_fork(session)  # type: ignore[arg-type]

    def _exit(self) -> None:
        close = None if self._close_at_exit is None else self._close_at_exit()
        if self._state == OPEN and self.current() is not None and close is not None:
            close()


def _weakly(fn: Callable[[], Any]) -> Callable[[], Callable[[], Any] | None]:
    # A bound method of the connector, held weakly; anything else, strongly.
    if hasattr(fn, "__self__") and hasattr(fn, "__func__"):
        return weakref.WeakMethod(fn)
    return lambda: fn


def is_requests_session(obj: object) -> bool:
    """Whether ``obj`` is a ``requests.Session`` (without importing requests when it is not loaded)."""
    requests_mod: Any = sys.modules.get("requests")
    return requests_mod is not None and isinstance(obj, requests_mod.Session)


# Every handle, weakly: for the fork hook and the interpreter-exit hook.
_HANDLES: weakref.WeakSet[ProcessRuntime] = weakref.WeakSet()
# Runtimes inherited through fork() are kept, never collected (see the module docstring).
_INHERITED: list[Runtime] = []


def _after_fork_in_child() -> None:
    reset_sessions: set[int] = set()
    for handle in list(_HANDLES):
        handle._after_fork_in_child(reset_sessions)


def _close_all_at_exit() -> None:
    for handle in list(_HANDLES):
        try:
            handle._exit()
        except Exception:  # exit must go on whatever one connector does
            _log.exception("closing a connector at interpreter exit failed")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

# threading's exit hooks run in reverse order of registration, before non-daemon
# threads are joined: registered after concurrent.futures' own (imported by the
# dispatcher above), ours runs first, so an unclosed connector cancels its
# backlog instead of the executor draining it at exit.
_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(_close_all_at_exit)
else:  # pragma: no cover - every supported CPython has it
    import atexit

    atexit.register(_close_all_at_exit)
