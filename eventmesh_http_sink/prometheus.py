"""Expose connectors' :meth:`~HttpSinkConnector.stats` as Prometheus metrics.

Needs the optional extra ``eventmesh-http-sink[prometheus]``. One collector per
registry serves every connector registered with it, each under its own ``sink``
label, and reads one ``stats()`` snapshot per connector per scrape, so nothing
is added to the send path and each metric family appears once in a scrape::

    from prometheus_client import start_http_server
    from eventmesh_http_sink.prometheus import register

    register(orders, sink="orders")      # the default registry
    register(audit, sink="audit")        # the same registry, another label
    start_http_server(9100)

Registering the same connector twice with one registry, or two connectors
under one ``sink`` label, raises ``ValueError``. Connectors are held weakly: a
collected connector's series disappear. :func:`unregister` removes one.

Metrics (every one labelled ``sink``):

* ``eventmesh_http_sink_records_submitted_total``
* ``eventmesh_http_sink_records_total{outcome="succeeded"|"failed"}``
* ``eventmesh_http_sink_failures_total{kind}`` (``http_503``, ``ResponseError``...)
* ``eventmesh_http_sink_retries_total{cause}``
* ``eventmesh_http_sink_url_records_total{url,outcome}`` and ``eventmesh_http_sink_url_retries_total{url}``
* ``eventmesh_http_sink_callback_errors_total``
* gauges ``eventmesh_http_sink_pending``, ``_in_flight``, ``_scheduled_retries``
* histogram ``eventmesh_http_sink_latency_seconds`` (``put`` to outcome)
* ``_dead_lettered_total``, ``_dead_letter_errors_total``, ``_rate_limit_waits_total``,
  ``_circuit_opened_total``, ``_circuit_waits_total``, ``_circuit_rejected_total``, gauges
  ``_circuits_open``, ``_waiting`` and ``_circuit_state{url,state}`` (zero when the feature is off)

A ``url`` label is ``scheme://host[:port]/path`` (:func:`~eventmesh_http_sink.redact.url_label`):
never a query string, which may hold a credential. URLs that differ only in
their query share a label, and their counts are summed.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any

from . import forksafe
from .connector import HttpSinkConnector
from .redact import url_label

__all__ = ["SinkCollector", "register", "unregister"]

_P = "eventmesh_http_sink"
_FEATURES = (
    ("dead_lettered", "Records written to the dead-letter target", "counter"),
    ("dead_letter_errors", "Dead-letter entries that could not be written", "counter"),
    ("rate_limit_waits", "Attempts that waited for a rate-limit token", "counter"),
    ("circuit_opened", "Times a circuit opened", "counter"),
    ("circuit_waits", "Attempts that waited for a closed circuit", "counter"),
    ("circuit_rejected", "Records failed at once by an open circuit", "counter"),
    ("circuits_open", "URLs whose circuit is open now", "gauge"),
    ("waiting", "Records waiting for a rate-limit token or a circuit", "gauge"),
)
_GAUGES = (
    ("pending", "Records accepted and not finished"),
    ("in_flight", "Requests on the wire"),
    ("scheduled_retries", "Records waiting for a retry"),
)

# One collector per registry (held weakly: a registry that goes, goes).
_COLLECTORS: weakref.WeakKeyDictionary[Any, SinkCollector] = weakref.WeakKeyDictionary()
_LOCK = forksafe.module_lock()


class SinkCollector:
    """The ``prometheus_client`` collector of one registry: every connector registered with it.

    Built by :func:`register`; connectors are held weakly.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sinks: dict[str, weakref.ref[HttpSinkConnector]] = {}  # sink label -> connector
        forksafe.register(self)

    def after_fork_in_child(self) -> None:
        """A scrape may have held the lock at the fork: a fresh one for the child."""
        forksafe.reinit(self._lock)

    def add(self, connector: HttpSinkConnector, sink: str) -> None:
        """Serve ``connector`` under label ``sink``.

        Raises:
            ValueError: the connector is registered already, or another one uses ``sink``.
        """
        with self._lock:
            self._prune()
            for label, ref in self._sinks.items():
                if ref() is connector:
                    raise ValueError(
                        f"this connector is already registered with this registry (sink={label!r});"
                        " register each connector once"
                    )
            if sink in self._sinks:
                raise ValueError(
                    f"sink={sink!r} is already used by another connector in this registry:"
                    " give each connector its own sink label"
                )
            self._sinks[sink] = weakref.ref(connector)

    def remove(self, connector: HttpSinkConnector) -> bool:
        """Stop serving ``connector``; ``False`` if it was not served."""
        with self._lock:
            for label, ref in list(self._sinks.items()):
                if ref() is connector:
                    del self._sinks[label]
                    return True
        return False

    def _prune(self) -> None:
        for label, ref in list(self._sinks.items()):
            if ref() is None:
                del self._sinks[label]

    def describe(self) -> Iterator[Any]:
        """The metric families, without samples (the registry checks names with it)."""
        return self._families([])

    def collect(self) -> Iterator[Any]:
        """The metric families of one stats snapshot per live connector."""
        with self._lock:
            self._prune()
            live = [(label, ref()) for label, ref in sorted(self._sinks.items())]
        return self._families([(label, c.stats()) for label, c in live if c is not None])

    def _families(self, snapshots: list[tuple[str, Any]]) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        def counter(name: str, doc: str, *labels: str) -> Any:
            return CounterMetricFamily(f"{_P}_{name}", doc, labels=["sink", *labels])

        def gauge(name: str, doc: str, *labels: str) -> Any:
            return GaugeMetricFamily(f"{_P}_{name}", doc, labels=["sink", *labels])

        submitted = counter("records_submitted", "Records accepted by put()")
        records = counter("records", "Records with a final outcome", "outcome")
        failures = counter("failures", "Records that finally failed, by error kind", "kind")
        retries = counter("retries", "Retries scheduled, by cause", "cause")
        url_records = counter(
            "url_records", "Final outcomes by the URL of the last attempt", "url", "outcome"
        )
        url_retries = counter("url_retries", "Retries by the URL that failed", "url")
        callback_errors = counter("callback_errors", "Record callbacks that raised")
        gauges = {name: gauge(name, doc) for name, doc in _GAUGES}
        features = {
            name: (counter if kind == "counter" else gauge)(name, doc) for name, doc, kind in _FEATURES
        }
        circuit = gauge("circuit_state", "URLs of this label in each circuit state", "url", "state")
        latency = HistogramMetricFamily(
            f"{_P}_latency_seconds", "Seconds from put() to the record's outcome", labels=["sink"]
        )
        for sink, st in snapshots:
            s = [sink]
            submitted.add_metric(s, st.submitted)
            records.add_metric([sink, "succeeded"], st.succeeded)
            records.add_metric([sink, "failed"], st.failed)
            for kind, n in st.failures_by_kind.items():
                failures.add_metric([sink, kind], n)
            for cause, n in st.retries_by_cause.items():
                retries.add_metric([sink, cause], n)
            by_label: dict[str, list[int]] = {}
            for url, row in st.per_url.items():
                sums = by_label.setdefault(url_label(url), [0, 0, 0])
                sums[0] += row.succeeded
                sums[1] += row.failed
                sums[2] += row.retried
            for label, (ok, failed, retried) in sorted(by_label.items()):
                url_records.add_metric([sink, label, "succeeded"], ok)
                url_records.add_metric([sink, label, "failed"], failed)
                url_retries.add_metric([sink, label], retried)
            callback_errors.add_metric(s, st.callback_errors)
            for name, family in gauges.items():
                family.add_metric(s, getattr(st, name))
            for name, family in features.items():
                family.add_metric(s, getattr(st, name))
            states: dict[tuple[str, str], int] = {}
            for url, state in st.breaker.items():
                key = (url_label(url), str(state))
                states[key] = states.get(key, 0) + 1
            for (label, state), n in sorted(states.items()):
                circuit.add_metric([sink, label, state], n)
            hist = st.latency
            buckets = [("+Inf" if b == float("inf") else f"{b:.6g}", n) for b, n in hist.cumulative()]
            latency.add_metric(s, buckets, hist.sum)
        yield submitted
        yield records
        yield failures
        yield retries
        yield url_records
        yield url_retries
        yield callback_errors
        yield from gauges.values()
        yield from features.values()
        yield circuit
        yield latency


def register(connector: HttpSinkConnector, registry: Any = None, *, sink: str = "default") -> SinkCollector:
    """Serve ``connector``'s stats from ``registry`` (the default registry if ``None``) as ``sink``.

    Every connector registered with one registry is served by that registry's
    one :class:`SinkCollector`, each under its own ``sink`` label.

    Returns:
        The registry's collector (``registry.unregister(collector)`` removes all its
        connectors; :func:`unregister` removes one).

    Raises:
        ValueError: ``connector`` is already registered with this registry, or another
            connector already uses ``sink`` there.
        ImportError: ``prometheus_client`` is not installed (``pip install eventmesh-http-sink[prometheus]``).
    """
    try:
        from prometheus_client import REGISTRY
    except ImportError as exc:
        raise ImportError(
            "eventmesh_http_sink.prometheus needs prometheus-client: "
            "pip install 'eventmesh-http-sink[prometheus]'"
        ) from exc
    target = REGISTRY if registry is None else registry
    with _LOCK:
        collector = _COLLECTORS.get(target)
        if collector is None:
            collector = _COLLECTORS[target] = SinkCollector()
            target.register(collector)
        else:
            try:
                target.register(collector)  # back in, if someone unregistered it
            except ValueError:
                pass  # still registered: the registry refuses its names twice
        collector.add(connector, sink)
    return collector


def unregister(connector: HttpSinkConnector, registry: Any = None) -> bool:
    """Stop serving ``connector`` from ``registry`` (the default registry if ``None``).

    Returns:
        ``False`` if it was not registered there.
    """
    if registry is None:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    with _LOCK:
        collector = _COLLECTORS.get(registry)
    return collector is not None and collector.remove(connector)
