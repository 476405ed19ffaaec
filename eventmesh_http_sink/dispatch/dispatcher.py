"""From accepted record to worker thread: the queue, the worker loops, the batcher, the timers.

:class:`Dispatcher` owns what moves records between threads: the queue that
worker loops drain, the thread pool they run on, the adaptive concurrency limit
that decides how many loops run, the per-URL batcher, and the two timers where
records wait (retry backoff; rate-limit token or open circuit) holding no
worker. Attempts are made by :class:`~.attempt.Attempts`; every outcome is
reported through the resolver's one ``resolve`` call.

At ``close``'s deadline, :meth:`Dispatcher.stop_attempts` makes sure no attempt
starts any more, and :meth:`Dispatcher.run_on_pool` runs the cancelled records'
callbacks spread over the pool's threads, never one after another in the
closing thread.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from eventmesh_http_sink.dispatch.attempt import Attempts
from eventmesh_http_sink.dispatch.batching import Batcher
from eventmesh_http_sink.dispatch.concurrency import ConcurrencyLimit
from eventmesh_http_sink.dispatch.strategies import BroadcastJoin
from eventmesh_http_sink.outcomes.resolver import closed_error
from eventmesh_http_sink.scheduling.retry import RetryScheduler

if TYPE_CHECKING:
    from eventmesh_http_sink.config import HttpSinkConfig
    from eventmesh_http_sink.dispatch.strategies import Strategy
    from eventmesh_http_sink.dispatch.unit import Unit
    from eventmesh_http_sink.outcomes.hooks import Hooks
    from eventmesh_http_sink.outcomes.resolver import Resolver
    from eventmesh_http_sink.scheduling.retry import RetryPolicy
    from eventmesh_http_sink.tracing import AttemptTracer
    from eventmesh_http_sink.wire.request_options import RequestOptions
    from eventmesh_http_sink.wire.transport import Transport

__all__ = ["Dispatcher"]

_log = logging.getLogger("eventmesh_http_sink")


class Dispatcher:
    """Moves accepted records to worker threads and back onto timers.

    Args:
        config: The connector's config.
        transport: Sends requests.
        resolver: The once-only resolver (and the ledger).
        hooks: The optional features' gate and after-attempt hooks.
        strategy: URL choice per attempt.
        options: Per-request options.
        policy: The retry policy.
        base_headers: The connector's request headers.
        tracer: The OpenTelemetry attempt tracer (``None`` unless ``tracing=True``).
    """

    def __init__(
        self,
        config: HttpSinkConfig,
        transport: Transport,
        resolver: Resolver,
        *,
        hooks: Hooks,
        strategy: Strategy,
        options: RequestOptions,
        policy: RetryPolicy,
        base_headers: dict[str, str],
        tracer: AttemptTracer | None = None,
    ) -> None:
        self._resolver = resolver
        self._strategy = strategy
        self._urls = config.urls
        self._broadcast = config.delivery_strategy == "broadcast"
        self._max_workers = config.max_workers
        self._executor = ThreadPoolExecutor(config.max_workers, thread_name_prefix="eventmesh-http-sink")
        self._lock = threading.Lock()
        # Records wait here for a worker loop: no per-record executor task or
        # second Future. deque append/popleft are atomic under the GIL.
        self._queue: collections.deque[Unit] = collections.deque()
        self._workers = 0  # worker loops running (under the lock), at most limit.limit
        self._limit = ConcurrencyLimit(config.max_workers)
        self._sending: set[Unit] = set()  # on the wire; set add/discard are atomic
        self._closing = False  # close's deadline passed: no attempt starts
        self._next_index = itertools.count().__next__  # atomic under the GIL: lock-free round robin
        self.retries: RetryScheduler[Unit] = RetryScheduler(self.resubmit)
        self.waits: RetryScheduler[Unit] = RetryScheduler(self.resubmit, name="eventmesh-http-sink-gate")
        self._batcher = Batcher(config.batch, self._send_batch) if config.batch is not None else None
        self._attempts = Attempts(
            config,
            transport,
            options=options,
            strategy=strategy,
            policy=policy,
            hooks=hooks,
            resolver=resolver,
            retries=self.retries,
            waits=self.waits,
            sending=self._sending,
            next_index=self._next_index,
            base_headers=base_headers,
            tracer=tracer,
        )

    @property
    def in_flight(self) -> int:
        """Units on the wire right now."""
        return len(self._sending)

    @property
    def limit(self) -> ConcurrencyLimit:
        """The adaptive concurrency limit."""
        return self._limit

    @property
    def workers(self) -> int:
        """Worker loops running right now."""
        return self._workers

    # -- intake ----------------------------------------------------------------------------

    def dispatch(self, unit: Unit) -> None:
        """Send a newly accepted record (called from ``put`` after its slot is taken). Never raises."""
        self._attempts.guarded((unit,), self._dispatch, unit)

    def _dispatch(self, unit: Unit) -> bool:
        if not self._broadcast:
            # _send_unit, inlined: this is the intake's hot path.
            batcher = self._batcher
            if batcher is None:
                self._enqueue(unit)
            elif not batcher.add(self._strategy.choose(unit, self._next_index), unit, len(unit.item)):
                self._resolver.resolve(unit, closed_error(unit))  # close() stopped the batcher meanwhile
            return False
        join = BroadcastJoin(unit, self._urls, self._resolver.resolve)
        copies = [unit.copy_to(url, join) for url in self._urls]
        self._resolver.track(copies)
        for copy in copies:
            self._send_unit(copy)
        return False

    def resubmit(self, unit: Unit) -> None:
        """A timer's wait is over: the unit goes back to a worker or its batch. Never raises."""
        if self._resolver.is_live(unit):
            self._attempts.guarded((unit,), self._send_unit, unit)

    def _send_unit(self, unit: Unit) -> bool:
        # To a worker loop, or into its URL's batch.
        batcher = self._batcher
        if batcher is None:
            self._enqueue(unit)
        elif not batcher.add(self._strategy.choose(unit, self._next_index), unit, len(unit.item)):
            self._resolver.resolve(unit, closed_error(unit))  # close() stopped the batcher meanwhile
        return False

    def _enqueue(self, unit: Unit) -> None:
        # No lock while enough loops run: the record goes on the queue first, then the
        # loop count is read; a loop leaving gives its slot back first, then looks at the
        # queue again (_work). Under the GIL one of the two sees the other: no record
        # is stranded.
        self._queue.append(unit)
        if self._workers < self._limit.limit and not self._closing:
            with self._lock:
                spawn = self._workers < self._limit.limit and not self._closing
                if spawn:
                    self._workers += 1
            if spawn:
                self._spawn()

    def _spawn(self) -> None:
        # Called after reserving a worker slot (workers += 1 under the lock).
        try:
            self._executor.submit(self._work)
        except RuntimeError as exc:  # the executor is shut (interpreter exit): nothing queued will go
            with self._lock:
                self._workers -= 1
            while self._queue:
                unit = self._queue.popleft()
                self._resolver.resolve(unit, closed_error(unit, exc))

    # -- worker loops ----------------------------------------------------------------------

    def _work(self) -> None:
        """A worker loop: send queued records until none is left, the limit shrank, or close."""
        queue = self._queue
        limit = self._limit
        single = self._attempts.single
        holding = True  # this loop's worker slot, given back exactly once
        try:
            while True:
                try:
                    unit = queue.popleft()
                except IndexError:
                    with self._lock:  # give the slot back first, then look again (see _enqueue)
                        self._workers -= 1
                        holding = False
                    if not queue or self._closing:
                        return
                    with self._lock:  # a record came meanwhile: take a slot back, if one is free
                        if self._workers >= limit.limit:
                            return  # a running loop (or one _enqueue spawned) takes it
                        self._workers += 1
                        holding = True
                    continue
                if self._closing:
                    queue.clear()  # close claimed every queued record: free the thread for callbacks
                    continue
                started = time.monotonic()
                # Fast failures (refused connections, skipped records) say nothing
                # about the endpoint's latency: they would drag the minimum down.
                if single(unit) and limit.observe(time.monotonic() - started):
                    self._grow()
                elif self._workers > limit.limit:
                    with self._lock:
                        if self._workers > limit.limit:
                            self._workers -= 1
                            holding = False
                            return
        finally:
            if holding:  # defensive: only a bug in this loop gets here
                with self._lock:
                    self._workers -= 1

    def _grow(self) -> None:
        # The limit grew: start more loops while records wait.
        while self._queue and self._workers < self._limit.limit and not self._closing:
            with self._lock:
                if self._workers >= self._limit.limit:
                    return
                self._workers += 1
            self._spawn()

    # -- batches ---------------------------------------------------------------------------

    def _send_batch(self, url: str, units: list[Unit]) -> None:
        """The batcher's ``send``: one worker task per batch. Never raises."""
        try:
            self._executor.submit(self._attempts.batch, url, units)
        except RuntimeError as exc:  # the executor is shut: the batch will not go
            for unit in units:
                self._resolver.resolve(unit, closed_error(unit, exc))

    def drain_batches(self) -> None:
        """``flush`` and ``close`` send partial batches at once."""
        if self._batcher is not None:
            self._batcher.drain()

    # -- closing ---------------------------------------------------------------------------

    def stop_attempts(self) -> None:
        """``close``'s deadline: no attempt starts from now on, and no worker loop."""
        with self._lock:
            self._closing = True
            self._attempts.stop()

    def abandon_in_flight(self) -> None:
        """After ``close`` claimed every record: requests still unwinding from the abort count no more.

        Their records are finished (cancelled); the workers' own removal of the
        mark, when the aborted send returns, is then a no-op.
        """
        self._sending.clear()

    def stop_timers(self) -> None:
        """Stop the retry and gate timers and the batcher (their records were claimed)."""
        self.retries.stop()
        self.waits.stop()
        if self._batcher is not None:
            self._batcher.stop()

    def run_on_pool(self, jobs: list[Callable[[], None]]) -> None:
        """Run ``jobs`` spread over the pool's threads (the cancelled records' callbacks).

        At most ``max_workers`` tasks drain one shared deque, so slow callbacks
        take their time in parallel. Returns at once; the resolver's ledger
        tells when they are done.
        """
        left = collections.deque(jobs)

        def drain() -> None:
            while True:
                try:
                    job = left.popleft()
                except IndexError:
                    return
                try:
                    job()
                except BaseException:  # one job (a done-callback raising SystemExit) must not stop the rest
                    _log.exception("finishing a record cancelled at close failed")

        for _ in range(min(len(jobs), self._max_workers)):
            try:
                self._executor.submit(drain)
            except RuntimeError:  # the executor is gone (interpreter exit): run them here
                drain()
                return

    def shutdown(self, wait: bool) -> None:
        """Stop the thread pool (``wait``: let the loops finish)."""
        self._executor.shutdown(wait=wait, cancel_futures=not wait)
