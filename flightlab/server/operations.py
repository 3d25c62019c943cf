"""What running a server as a service adds: health, metrics, drain, replicas.

:class:`ServiceOptions` are the operator's settings; :class:`Operations` is
what an :class:`~flightlab.server.lifecycle.OfflineServer` holds of them while
it runs: the drain gate every RPC passes, the readiness state (and its gRPC
health port), the Prometheus metrics (and their HTTP port), and the location
the server advertises for the results of its staged commands.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flightlab.server.drain import DrainGate
from flightlab.server.health import HealthServer, HealthState
from flightlab.server.metrics import MetricsHttpServer, ServerMetrics

if TYPE_CHECKING:
    from flightlab.server.lifecycle import OfflineServer

logger = logging.getLogger("flightlab.server")

DEFAULT_DRAIN_SECONDS = 30.0


@dataclass(frozen=True)
class ServiceOptions:
    """How a server runs as a service.

    ``health_port``/``metrics_port``: serve gRPC health / Prometheus metrics
    there (0 picks a free port; None serves none). ``advertise_location``: the
    URI clients fetch results from (the FlightInfo endpoint's location), e.g.
    this replica's own address behind a load balancer; None means "the server
    you asked". ``drain_seconds``: how long running requests may take to
    finish once a drain begins.
    """

    health_port: int | None = None
    metrics_port: int | None = None
    advertise_location: str | None = None
    drain_seconds: float = DEFAULT_DRAIN_SECONDS

    def __post_init__(self) -> None:
        if self.drain_seconds < 0:
            raise ValueError("drain_seconds must not be negative")


class Operations:
    def __init__(self, server: OfflineServer, options: ServiceOptions | None = None):
        self.options = options or ServiceOptions()
        self._server = server
        self.drain = DrainGate()
        self.health = HealthState()
        self.metrics = ServerMetrics(server)
        self._health_server: HealthServer | None = None
        self._metrics_server: MetricsHttpServer | None = None
        self._stopped = threading.Event()

    @property
    def advertise_location(self) -> str | None:
        return self.options.advertise_location

    @property
    def health_port(self) -> int | None:
        return self._health_server.port if self._health_server else None

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_server.port if self._metrics_server else None

    def start(self, host: str) -> None:
        self._stopped.clear()
        self.health.set(ready=False, draining=False, stopped=False)
        if self.options.health_port is not None:
            self._health_server = HealthServer(self.health, host, self.options.health_port).start()
            logger.info("gRPC health service on %s:%d", host, self._health_server.port)
        if self.options.metrics_port is not None:
            self._metrics_server = self.metrics.serve(host, self.options.metrics_port)
            logger.info("Prometheus metrics on http://%s:%d/metrics", host, self.metrics_port)
        threading.Thread(
            target=self.health.probe_until_ready,
            args=(self._server.store, self._stopped),
            name="flightlab-readiness",
            daemon=True,
        ).start()

    def observe(self, call: Any, exc: BaseException | None = None) -> None:
        self.metrics.observe(call, time.perf_counter() - call.started, exc)

    def begin_drain(self) -> None:
        self.drain.start_draining()
        self.health.set(draining=True)

    def drain_until_idle(self, seconds: float | None = None) -> bool:
        """Drain: refuse new commands, wait for the running ones; True if all finished."""
        seconds = self.options.drain_seconds if seconds is None else seconds
        self.begin_drain()
        in_flight = self.drain.in_flight
        logger.info("draining: %d call(s) in flight, waiting up to %gs", in_flight, seconds)
        idle = self.drain.wait_idle(seconds)
        if not idle:
            logger.warning(
                "drain time over with %d call(s) still in flight: cutting them",
                self.drain.in_flight,
            )
            self.drain.cut()
        return idle

    def health_json(self) -> dict[str, Any]:
        return {**self.health.to_json(), "in_flight": self.drain.in_flight}

    def stop(self) -> None:
        self._stopped.set()
        self.health.set(stopped=True)
        if self._health_server is not None:
            self._health_server.stop()
            self._health_server = None
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None
