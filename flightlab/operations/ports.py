"""The side ports a server serves beside Flight: gRPC health and Prometheus metrics."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from flightlab.operations.health import HealthServer, HealthState
from flightlab.operations.metrics import MetricsHttpServer
from flightlab.operations.options import ServiceOptions

logger = logging.getLogger("flightlab.server")


class SidePorts:
    """Starts and stops the health and metrics servers ``options`` ask for."""

    def __init__(self, options: ServiceOptions, health: HealthState, metrics: CollectorRegistry):
        self._options = options
        self._health = health
        self._metrics = metrics
        self._health_server: HealthServer | None = None
        self._metrics_server: MetricsHttpServer | None = None

    @property
    def health_port(self) -> int | None:
        return self._health_server.port if self._health_server else None

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_server.port if self._metrics_server else None

    def start(self, host: str) -> None:
        if self._options.health_port is not None:
            self._health_server = HealthServer(self._health, host, self._options.health_port)
            self._health_server.start()
            logger.info("gRPC health service on %s:%d", host, self.health_port)
        if self._options.metrics_port is not None:
            self._metrics_server = MetricsHttpServer(
                self._metrics, host, self._options.metrics_port
            )
            logger.info("Prometheus metrics on http://%s:%d/metrics", host, self.metrics_port)

    def stop(self) -> None:
        if self._health_server is not None:
            self._health_server.stop()
            self._health_server = None
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None
