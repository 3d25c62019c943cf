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

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from flightlab.server.lifecycle import OfflineServer

# Until a server records which engine answered a call, Feast's store did.
DEFAULT_ENGINE = "feast"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServerMetrics:
    """The metrics of one server, in their own registry."""

    def __init__(self, server: OfflineServer):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "flightlab_requests",
            "Requests run, by API, engine and outcome (ok or error)",
            ["api", "engine", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "flightlab_request_seconds",
            "Time from the RPC's start to its answer, by API and engine",
            ["api", "engine"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rows_in = Counter("flightlab_rows_in", "Rows received, by API", ["api"], registry=r)
        self.rows_out = Counter("flightlab_rows_out", "Rows answered, by API", ["api"], registry=r)
        self.bytes_in = Counter(
            "flightlab_bytes_in", "Bytes of uploaded tables, by API", ["api"], registry=r
        )
        self.bytes_out = Counter(
            "flightlab_bytes_out", "Bytes of answered tables, by API", ["api"], registry=r
        )
        self.staged = Counter(
            "flightlab_staged_params",
            "Parameters staged by do_put, by API",
            ["api"],
            registry=r,
        )
        self.errors = Counter(
            "flightlab_errors",
            "Failed requests, by API and error class",
            ["api", "error_class"],
            registry=r,
        )
        r.register(_ServerGauges(server))

    def observe(self, call: Any, seconds: float, exc: BaseException | None) -> None:
        """Count one finished RPC (``call`` is the server's record of it)."""
        engine = getattr(call, "engine", None) or DEFAULT_ENGINE
        if exc is not None:
            api = call.api or call.rpc
            self.requests.labels(api, engine, "error").inc()
            self.errors.labels(api, type(exc).__name__).inc()
            self.latency.labels(api, engine).observe(seconds)
            return
        if not call.executed:
            if call.rpc == "do_put" and call.api:
                self.staged.labels(call.api).inc()
            return
        api = call.api or call.rpc
        self.requests.labels(api, engine, "ok").inc()
        self.latency.labels(api, engine).observe(seconds)
        self.rows_in.labels(api).inc(call.rows_in)
        self.rows_out.labels(api).inc(call.rows_out)
        self.bytes_out.labels(api).inc(call.bytes_out)
        self.bytes_in.labels(api).inc(request_bytes_in(getattr(call, "request", None)))

    def serve(self, host: str, port: int) -> MetricsHttpServer:
        return MetricsHttpServer(self.registry, host, port)


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


class _ServerGauges(Collector):
    """What a server holds at scrape time."""

    def __init__(self, server: OfflineServer):
        self._server = server

    def collect(self) -> Iterator[GaugeMetricFamily]:
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
