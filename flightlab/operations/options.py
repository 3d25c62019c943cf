"""The operator's settings for running a server as a service."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_DRAIN_SECONDS = 30.0


@dataclass(frozen=True)
class ServiceOptions:
    """How a server runs as a service.

    ``health_port``/``metrics_port``: serve gRPC health / Prometheus metrics
    there (0 picks a free port; None serves none). ``advertise_location``: the
    URI clients fetch results from (the FlightInfo endpoint's location), e.g.
    this replica's own address behind a load balancer; None means "the server
    you asked". ``drain_seconds``: how long running requests may take to
    finish once a drain begins. ``export_location``: where exported results
    are written (a folder, or ``s3://bucket/prefix``); None refuses exports.
    """

    health_port: int | None = None
    metrics_port: int | None = None
    advertise_location: str | None = None
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    export_location: str | None = None

    def __post_init__(self) -> None:
        if self.drain_seconds < 0:
            raise ValueError("drain_seconds must not be negative")
