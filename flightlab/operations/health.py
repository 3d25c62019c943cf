"""Health: is this replica ready to serve, and the gRPC health service that says so.

Kubernetes ``grpc:`` probes call the standard ``grpc.health.v1.Health``
service. Flight's server (C++ inside pyarrow) cannot host another gRPC service
on its port, so :class:`HealthServer` runs it with ``grpcio`` on a side port
(``--health-port``). The same answer is the ``healthcheck`` Flight action.

A replica is ``SERVING`` once its registry has loaded and its offline store
has answered one cheap call (:func:`probe_store`), and ``NOT_SERVING`` before
that, while draining and once stopped: a load balancer sends it work only
when the work can succeed.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from typing import Any

logger = logging.getLogger("flightlab.server")

SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
# The services a probe may name: "" (the whole server, what Kubernetes asks by
# default) and Flight's own service name.
HEALTH_SERVICES = ("", "arrow.flight.protocol.FlightService")
# How long to wait between readiness probes that fail (a registry not yet
# reachable at start-up, an offline store down).
_PROBE_RETRY_SECONDS = 5.0


def probe_store(store: Any) -> str:
    """Load the registry and ask the offline store one cheap question: the
    columns of the first registered data source it can read. Return what was
    checked."""
    store.refresh_registry()
    for source in store.list_data_sources():
        try:
            source.get_table_column_names_and_types(store.config)
        except NotImplementedError:
            continue  # a request or push source: no table behind it
        return f"registry loaded; offline store read data source {source.name!r}"
    return "registry loaded (no data source with a table to probe)"


class HealthState:
    """A replica's readiness: probed once at start-up, then draining or stopped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ready = False
        self.draining = False
        self.stopped = False
        self.detail = "starting: the registry and the offline store are not probed yet"
        self._listeners: list = []

    @property
    def status(self) -> str:
        with self._lock:
            serving = self.ready and not self.draining and not self.stopped
        return SERVING if serving else NOT_SERVING

    def on_change(self, listener) -> None:
        """Call ``listener(status)`` now and on every change."""
        self._listeners.append(listener)
        listener(self.status)

    def set(self, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)
        for listener in self._listeners:
            listener(self.status)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "ready": self.ready,
            "draining": self.draining,
            "detail": self.detail,
        }

    def probe_until_ready(self, store: Any, stopped: threading.Event) -> None:
        """Probe ``store`` until it answers (or the server stops); then ready."""
        while not stopped.is_set():
            try:
                detail = probe_store(store)
            except Exception as exc:  # any failure: not ready yet, say why
                self.set(detail=f"not ready: {type(exc).__name__}: {exc}")
                logger.warning("readiness probe failed: %s: %s", type(exc).__name__, exc)
                stopped.wait(_PROBE_RETRY_SECONDS)
                continue
            self.set(ready=True, detail=detail)
            logger.info("ready: %s", detail)
            return


class HealthServer:
    """``grpc.health.v1.Health`` on ``host:port`` (plaintext, as kubelet probes)."""

    def __init__(self, state: HealthState, host: str, port: int):
        import grpc
        from grpc_health.v1 import health, health_pb2_grpc

        self._servicer = health.HealthServicer(experimental_non_blocking=True)
        self._server = grpc.server(futures.ThreadPoolExecutor(2, "flightlab-health"))
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, self._server)
        bound = self._server.add_insecure_port(f"{_grpc_host(host)}:{port}")
        if bound == 0:
            raise OSError(f"cannot listen for the health service on {host}:{port}")
        self.port = bound
        state.on_change(self._publish)

    def _publish(self, status: str) -> None:
        from grpc_health.v1 import health_pb2

        value = health_pb2.HealthCheckResponse.ServingStatus.Value(status)
        for service in HEALTH_SERVICES:
            self._servicer.set(service, value)

    def start(self) -> HealthServer:
        self._server.start()
        return self

    def stop(self) -> None:
        # Watchers hear NOT_SERVING before the port closes.
        self._servicer.enter_graceful_shutdown()
        self._server.stop(grace=1).wait(5)


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
