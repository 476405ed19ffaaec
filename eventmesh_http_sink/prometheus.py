"""Expose a connector's :meth:`~HttpSinkConnector.stats` as Prometheus metrics.

Needs the optional extra ``eventmesh-http-sink[prometheus]``. A custom
collector reads one ``stats()`` snapshot per scrape, so nothing is added to the
send path::

    from prometheus_client import start_http_server
    from eventmesh_http_sink.prometheus import register

    register(connector)
    start_http_server(9100)

Metrics (every one labelled ``sink``):

* ``eventmesh_http_sink_records_submitted_total``
* ``eventmesh_http_sink_records_total{outcome="succeeded"|"failed"}``
* ``eventmesh_http_sink_failures_total{kind}`` (``http_503``, ``ResponseError``...)
* ``eventmesh_http_sink_retries_total{cause}``
* ``eventmesh_http_sink_url_records_total{url,outcome}`` and ``eventmesh_http_sink_url_retries_total{url}``
* ``eventmesh_http_sink_callback_errors_total``
* gauges ``eventmesh_http_sink_pending``, ``_in_flight``, ``_scheduled_retries``
* histogram ``eventmesh_http_sink_latency_seconds`` (``put`` to outcome)
* where the build has them: ``_dead_lettered_total``, ``_dead_letter_errors_total``,
  ``_rate_limit_waits_total``, ``_circuit_opened_total``, ``_circuit_waits_total``,
  ``_circuit_rejected_total``, gauges ``_circuits_open``, ``_waiting`` and
  ``_circuit_state{url,state}``
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

from .connector import HttpSinkConnector

__all__ = ["SinkCollector", "register"]

_P = "eventmesh_http_sink"
_OPTIONAL = (
    ("dead_lettered", "Records written to the dead-letter target", "counter"),
    ("dead_letter_errors", "Dead-letter writes that failed", "counter"),
    ("rate_limit_waits", "Attempts that waited for a rate-limit token", "counter"),
    ("circuit_opened", "Times a circuit opened", "counter"),
    ("circuit_waits", "Attempts that waited for a closed circuit", "counter"),
    ("circuit_rejected", "Records failed at once by an open circuit", "counter"),
    ("circuits_open", "URLs whose circuit is open now", "gauge"),
    ("waiting", "Records waiting for a rate-limit token or a circuit", "gauge"),
)


class SinkCollector:
    """A ``prometheus_client`` collector for one connector (held weakly).

    Args:
        connector: The connector to describe.
        sink: The value of the ``sink`` label, to tell several connectors apart.
    """

    def __init__(self, connector: HttpSinkConnector, sink: str = "default") -> None:
        self._ref = weakref.ref(connector)
        self.sink = sink

    def collect(self) -> Iterator[Any]:
        """Yield the metric families of one stats snapshot (nothing once the connector is gone)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        connector = self._ref()
        if connector is None:
            return
        st = connector.stats()
        s = [self.sink]

        submitted = CounterMetricFamily(
            f"{_P}_records_submitted", "Records accepted by put()", labels=["sink"]
        )
        submitted.add_metric(s, st.submitted)
        yield submitted

        records = CounterMetricFamily(
            f"{_P}_records", "Records with a final outcome", labels=["sink", "outcome"]
        )
        records.add_metric([*s, "succeeded"], st.succeeded)
        records.add_metric([*s, "failed"], st.failed)
        yield records

        failures = CounterMetricFamily(
            f"{_P}_failures", "Records that finally failed, by error kind", labels=["sink", "kind"]
        )
        for kind, n in st.failures_by_kind.items():
            failures.add_metric([*s, kind], n)
        yield failures

        retries = CounterMetricFamily(
            f"{_P}_retries", "Retries scheduled, by cause", labels=["sink", "cause"]
        )
        for cause, n in st.retries_by_cause.items():
            retries.add_metric([*s, cause], n)
        yield retries

        url_records = CounterMetricFamily(
            f"{_P}_url_records",
            "Final outcomes by the URL of the last attempt",
            labels=["sink", "url", "outcome"],
        )
        url_retries = CounterMetricFamily(
            f"{_P}_url_retries", "Retries by the URL that failed", labels=["sink", "url"]
        )
        for url, row in st.per_url.items():
            url_records.add_metric([*s, url, "succeeded"], row.succeeded)
            url_records.add_metric([*s, url, "failed"], row.failed)
            url_retries.add_metric([*s, url], row.retried)
        yield url_records
        yield url_retries

        callback_errors = CounterMetricFamily(
            f"{_P}_callback_errors", "Record callbacks that raised", labels=["sink"]
        )
        callback_errors.add_metric(s, st.callback_errors)
        yield callback_errors

        for name, doc, value in (
            ("pending", "Records accepted and not finished", st.pending),
            ("in_flight", "Requests on the wire", st.in_flight),
            ("scheduled_retries", "Records waiting for a retry", st.scheduled_retries),
        ):
            gauge = GaugeMetricFamily(f"{_P}_{name}", doc, labels=["sink"])
            gauge.add_metric(s, value)
            yield gauge

        # Fields of features that may be absent from this build (dead letters,
        # rate limit, circuit breaker): exported when the snapshot has them.
        for name, doc, kind in _OPTIONAL:
            optional = getattr(st, name, None)
            if isinstance(optional, int):
                family: Any = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                    f"{_P}_{name}", doc, labels=["sink"]
                )
                family.add_metric(s, optional)
                yield family
        if st.breaker:
            circuit = GaugeMetricFamily(
                f"{_P}_circuit_state",
                "1 for the current circuit state of a URL",
                labels=["sink", "url", "state"],
            )
            for url, state in st.breaker.items():
                circuit.add_metric([*s, url, str(state)], 1)
            yield circuit

        hist = st.latency
        latency = HistogramMetricFamily(
            f"{_P}_latency_seconds", "Seconds from put() to the record's outcome", labels=["sink"]
        )
        buckets = [("+Inf" if b == float("inf") else f"{b:.6g}", n) for b, n in hist.cumulative()]
        latency.add_metric(s, buckets, hist.sum)
        yield latency


def register(connector: HttpSinkConnector, registry: Any = None, *, sink: str = "default") -> SinkCollector:
    """Register a collector for ``connector`` with ``registry`` (the default registry if ``None``).

    Returns:
        The collector, for ``registry.unregister(collector)``.

    Raises:
        ImportError: ``prometheus_client`` is not installed (``pip install eventmesh-http-sink[prometheus]``).
    """
    try:
        from prometheus_client import REGISTRY
    except ImportError as exc:
        raise ImportError(
            "eventmesh_http_sink.prometheus needs prometheus-client: "
            "pip install 'eventmesh-http-sink[prometheus]'"
        ) from exc
    collector = SinkCollector(connector, sink)
    (REGISTRY if registry is None else registry).register(collector)
    return collector
