"""Prometheus metrics of a server, on an HTTP port (``--metrics-port``).

Counters are a view of the server's one record of counts
(:class:`~flightlab.operations.counts.RequestCounts`), which the ``stats``
action reads too, so the two and the request log agree. Gauges (staged
commands, worker queue, drain) are read when Prometheus scrapes, from a
callable the server gives.

Each server has its own :class:`~prometheus_client.CollectorRegistry`, not
the process-wide default: several servers in one process (tests, notebooks)
keep apart. And the counts live in RequestCounts, not in prometheus_client's
metric objects: importing Feast's metrics module turns prometheus_client's
values into process-wide files (its multiprocess mode), shared by every metric
of the same name, so two servers in one process would add up each other's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from flightlab.operations.counts import LATENCY_BUCKETS, RequestCounts

# What a server reports at scrape time: gauge name -> (help, value).
Gauges = Callable[[], Mapping[str, tuple[str, float]]]

_COUNTERS: dict[str, tuple[str, list[str]]] = {
    "requests": (
        "Requests run, by API, engine and outcome (ok or error)",
        ["api", "engine", "outcome"],
    ),
    "rows_in": ("Rows received, by API", ["api"]),
    "rows_out": ("Rows answered, by API", ["api"]),
    "bytes_in": ("Bytes of uploaded tables, by API", ["api"]),
    "bytes_out": ("Bytes of answered tables, by API", ["api"]),
    "staged_params": ("Parameters staged by do_put, by API", ["api"]),
    "errors": ("Failed requests, by API and error class", ["api", "error_class"]),
}


def metrics_registry(counts: RequestCounts, gauges: Gauges) -> CollectorRegistry:
    """A registry holding one server's counters and gauges."""
    registry = CollectorRegistry()
    registry.register(_Collector(counts, gauges))
    return registry


class _Collector(Collector):
    def __init__(self, counts: RequestCounts, gauges: Gauges):
        self._counts = counts
        self._gauges = gauges

    def collect(self) -> Iterator[Any]:
        counts = self._counts.snapshot()
        for name, (documentation, labelnames) in _COUNTERS.items():
            family = CounterMetricFamily(f"flightlab_{name}", documentation, labels=labelnames)
            for labels, value in sorted(getattr(counts, name).items()):
                family.add_metric(list(labels) if isinstance(labels, tuple) else [labels], value)
            yield family
        family = HistogramMetricFamily(
            "flightlab_request_seconds",
            "Time from the RPC's start to its answer, by API and engine",
            labels=["api", "engine"],
        )
        for labels, buckets in sorted(counts.latency.items()):
            pairs = [(str(b), c) for b, c in zip(LATENCY_BUCKETS, buckets, strict=False)]
            pairs.append(("+Inf", buckets[-2]))
            family.add_metric(list(labels), pairs, sum_value=buckets[-1])
        yield family
        for name, (documentation, value) in self._gauges().items():
            yield GaugeMetricFamily(name, documentation, value=value)


class MetricsHttpServer:
    """``/metrics`` over HTTP on ``host:port``, from a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int):
        from prometheus_client import start_http_server

        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port = self._httpd.server_address[1]

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
