"""Prometheus metrics of a server, on an HTTP port (``--metrics-port``).

Counters are fed from the one place every call ends
(:meth:`OfflineServer._record_success` / ``_record_failure``, through
:meth:`ServerMetrics.observe`), so they agree with the ``stats`` action and
the request log. Gauges (staged commands, worker queue, drain) are read from
the server when Prometheus scrapes.

Each server has its own :class:`~prometheus_client.CollectorRegistry`, not
the process-wide default: several servers in one process (tests, notebooks)
keep apart.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from flightlab.server.lifecycle import OfflineServer

# The engine label of a call no retrieval engine answered: a write, a staging
# put, a request refused before an engine was chosen.
DEFAULT_ENGINE = "none"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServerMetrics:
    """The metrics of one server, in their own registry.

    The counts live in this object, not in prometheus_client's metric
    objects: importing Feast's metrics module turns prometheus_client's values
    into process-wide files (its multiprocess mode), shared by every metric of
    the same name, so two servers in one process would add up each other's.
    """

    def __init__(self, server: OfflineServer):
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple[str, ...], float]] = {n: {} for n in _COUNTERS}
        self._latency: dict[tuple[str, str], list[float]] = {}  # bucket counts, then sum
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self, server))

    def observe(self, call: Any, seconds: float, exc: BaseException | None) -> None:
        """Count one finished RPC (``call`` is the server's record of it)."""
        engine = getattr(call, "engine", None) or DEFAULT_ENGINE
        api = call.api or call.rpc
        with self._lock:
            if exc is not None:
                self._add("requests", (api, engine, "error"))
                self._add("errors", (api, type(exc).__name__))
                self._observe_latency(api, engine, seconds)
                return
            if not call.executed:
                if call.rpc == "do_put" and call.api:
                    self._add("staged_params", (call.api,))
                return
            self._add("requests", (api, engine, "ok"))
            self._observe_latency(api, engine, seconds)
            self._add("rows_in", (api,), call.rows_in)
            self._add("rows_out", (api,), call.rows_out)
            self._add("bytes_out", (api,), call.bytes_out)
            self._add("bytes_in", (api,), request_bytes_in(getattr(call, "request", None)))

    def _add(self, counter: str, labels: tuple[str, ...], amount: float = 1) -> None:
        values = self._counters[counter]
        values[labels] = values.get(labels, 0) + amount

    def _observe_latency(self, api: str, engine: str, seconds: float) -> None:
        counts = self._latency.setdefault((api, engine), [0.0] * (len(_LATENCY_BUCKETS) + 2))
        for i, bound in enumerate(_LATENCY_BUCKETS):
            if seconds <= bound:
                counts[i] += 1
        counts[-2] += 1  # +Inf, i.e. the count
        counts[-1] += seconds

    def families(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        with self._lock:
            counters = {n: dict(v) for n, v in self._counters.items()}
            latency = {k: list(v) for k, v in self._latency.items()}
        for name, (documentation, labelnames) in _COUNTERS.items():
            family = CounterMetricFamily(f"flightlab_{name}", documentation, labels=labelnames)
            for labels, value in sorted(counters[name].items()):
                family.add_metric(list(labels), value)
            yield family
        family = HistogramMetricFamily(
            "flightlab_request_seconds",
            "Time from the RPC's start to its answer, by API and engine",
            labels=["api", "engine"],
        )
        for labels, counts in sorted(latency.items()):
            buckets = [(str(b), c) for b, c in zip(_LATENCY_BUCKETS, counts, strict=False)]
            buckets.append(("+Inf", counts[-2]))
            family.add_metric(list(labels), buckets, sum_value=counts[-1])
        yield family

    def serve(self, host: str, port: int) -> MetricsHttpServer:
        return MetricsHttpServer(self.registry, host, port)


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


def request_bytes_in(request: Any) -> int:
    """The bytes of the tables a request carried (entity rows, rows to write)."""
    if request is None:
        return 0
    tables = request.table_params() if hasattr(request, "table_params") else {}
    return sum(t.nbytes for t in tables.values() if isinstance(t, pa.Table))


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


class _Collector(Collector):
    """The server's counters, and what it holds at scrape time."""

    def __init__(self, metrics: ServerMetrics, server: OfflineServer):
        self._metrics = metrics
        self._server = server

    def collect(self) -> Iterator[Any]:
        yield from self._metrics.families()
        server, ops = self._server, self._server.ops
        load = server._pool.load() if server._pool is not None else {}
        values = {
            "flightlab_staged_commands": ("Commands staged, not run yet", len(server.staging)),
            "flightlab_staged_bytes": ("Bytes staged by all clients", server.staging.staged_bytes),
            "flightlab_workers": ("Size of the worker pool", load.get("workers", 0)),
            "flightlab_workers_busy": ("Workers running a call", load.get("running", 0)),
            "flightlab_worker_queue_depth": ("Requests queued for a worker", load.get("queued", 0)),
            "flightlab_in_flight": ("RPCs and result streams in flight", ops.drain.in_flight),
            "flightlab_draining": ("1 while the server drains", int(ops.drain.draining)),
            "flightlab_ready": ("1 once the readiness probe passed", int(ops.health.ready)),
        }
        for name, (documentation, value) in values.items():
            yield GaugeMetricFamily(name, documentation, value=value)
