"""The offline server's life cycle: :class:`OfflineServer` and its TLS settings.

:class:`OfflineServer` is what users start (from Python, a notebook or the
``flightlab serve_offline`` command). It holds the parts and gives each what
it uses: the Feast store and the engine to the dispatcher
(:mod:`flightlab.dispatch`); the dispatcher, the worker pool, the caps, the
drain gate and the record of counts to the
:class:`~flightlab.server.calls.CallRunner`; the runner and the staged
commands to the :class:`~flightlab.server.rpcs.FlightService`; the counts,
readiness and drain to the operations side (:mod:`flightlab.operations`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from flightlab.dispatch.exports import ExportLocation
from flightlab.dispatch.reuse import ResultReuse
from flightlab.engine.settings import EngineSettings, default_memory_limit
from flightlab.engine.spill import default_spill_root, sweep_leftovers
from flightlab.operations.counts import RequestCounts
from flightlab.operations.drain import DrainGate
from flightlab.operations.health import HealthState
from flightlab.operations.metrics import metrics_registry
from flightlab.operations.options import ServiceOptions
from flightlab.operations.ports import SidePorts
from flightlab.server.auth import CALL_MIDDLEWARE, CallMiddlewareFactory
from flightlab.server.calls import CallRunner
from flightlab.server.limits import ServerLimits
from flightlab.server.rpcs import FlightService
from flightlab.server.staging import CommandStaging
from flightlab.server.workers import WorkerPool
from flightlab.wire.actions import ACTION_HEALTHCHECK, ACTION_PROTOCOL_VERSION, ACTION_STATS
from flightlab.wire.version import server_versions

logger = logging.getLogger("flightlab.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8815


@dataclass(frozen=True)
class ServerTls:
    """TLS for the server: its certificate chain and key (PEM), and for mTLS
    the CA that client certificates must chain to."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(
        cls, cert: str | Path, key: str | Path, client_ca: str | Path | None = None
    ) -> ServerTls:
        return cls(
            Path(cert).read_bytes(),
            Path(key).read_bytes(),
            Path(client_ca).read_bytes() if client_ca else None,
        )


class OfflineServer:
    """Serves a Feast repo's offline store over Arrow Flight.

    ``OfflineServer(repo_path)`` or ``OfflineServer(store=feature_store)``;
    ``start()`` serves from a background thread, ``stop()`` ends it, and the
    server is a context manager. ``port=0`` picks a free port: read
    :attr:`port` or :attr:`location` once started. Authentication follows the
    repo's ``auth`` config; ``tls`` serves over TLS (and mTLS with a client CA).
    ``engine`` says who answers retrievals (flightlab's DuckDB engine or the
    repo's Feast store) and with which resources; the default, ``auto``, uses
    the engine wherever it gives the Feast store's own answers. ``service``
    adds what running as a service needs: health and metrics ports, a drain
    time, the location to advertise.
    """

    def __init__(
        self,
        repo_path: str | Path | None = None,
        *,
        store: Any = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        limits: ServerLimits | None = None,
        tls: ServerTls | None = None,
        engine: EngineSettings | None = None,
        service: ServiceOptions | None = None,
    ):
        if (repo_path is None) == (store is None):
            raise ValueError("give exactly one of repo_path and store")
        if store is None:
            from feast import FeatureStore

            store = FeatureStore(repo_path=str(repo_path))
        from flightlab.dispatch.dispatcher import OfflineDispatcher
        from flightlab.engine.runner import Engine
        from flightlab.server.auth import authenticator_for

        self.store = store
        self.limits = limits or ServerLimits()
        self.tls = tls
        self.service_options = service or ServiceOptions()
        self.authenticator = authenticator_for(store.config.auth_config)
        self.engine_settings = _with_memory_limit(engine or EngineSettings(), self.limits.workers)
        self.dispatcher = OfflineDispatcher(
            store,
            enforce_permissions=self.authenticator.enforces_permissions,
            engine=Engine(self.engine_settings),
            exports=_export_location(self.service_options.export_location),
            reuse=ResultReuse(self.limits.reuse_bytes, store.config.repo_path),
        )
        self.staging = CommandStaging(self.limits.staged_ttl, self.limits.max_staged_bytes)
        self.counts = RequestCounts()
        self.drain = DrainGate()
        self.health = HealthState()
        self.host = host
        self._requested_port = port
        self._pool: WorkerPool | None = None
        self._service: FlightService | None = None
        self._side_ports = SidePorts(
            self.service_options, self.health, metrics_registry(self.counts, self._gauges)
        )
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    # --- life cycle --------------------------------------------------------------

    def start(self) -> OfflineServer:
        if self._service is not None:
            raise RuntimeError("the server is already running")
        self._pool = WorkerPool(self.limits.workers, self.limits.queue_timeout)
        self._stopped.clear()
        # What a server killed on this host left in the spill folder (its joins'
        # spill files, Spark's result copies) is nobody's now.
        sweep_leftovers(default_spill_root(self.engine_settings.spill_dir))
        runner = CallRunner(
            run_request=self.dispatcher.run,
            pool=self._pool,
            limits=self.limits,
            counts=self.counts,
            drain=self.drain,
            drop_command=self.staging.drop,
        )
        self._service = FlightService(
            f"{self.scheme}://{self.host}:{self._requested_port}",
            runner=runner,
            staging=self.staging,
            limits=self.limits,
            server_actions={
                ACTION_STATS: lambda: self.stats_json(for_caller=True),
                ACTION_HEALTHCHECK: self.health_json,
                ACTION_PROTOCOL_VERSION: lambda: {
                    **server_versions(),
                    "export": self.service_options.export_location is not None,
                },
            },
            advertise_location=self.service_options.advertise_location,
            middleware={CALL_MIDDLEWARE: CallMiddlewareFactory(self.authenticator)},
            **self._tls_arguments(),
        )
        self._thread = threading.Thread(
            target=self._service.serve, name="flightlab-server", daemon=True
        )
        self._thread.start()
        threading.Thread(target=self._sweep_expired, name="flightlab-sweeper", daemon=True).start()
        self.health.set(ready=False, draining=False, stopped=False)
        self._side_ports.start(self.host)
        threading.Thread(
            target=self.health.probe_until_ready,
            args=(self.store, self._stopped),
            name="flightlab-readiness",
            daemon=True,
        ).start()
        logger.info(
            "flightlab offline server serving project %s at %s (auth: %s)",
            self.store.project,
            self.location,
            self.store.config.auth_config.type,
        )
        return self

    def stop(self) -> None:
        service, self._service = self._service, None
        if service is None:
            return
        self._stopped.set()
        self.health.set(stopped=True)
        self._side_ports.stop()
        service.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._pool is not None:
            self._pool.shutdown()
        self.dispatcher.engine.close()  # its pooled database connections
        logger.info("flightlab offline server stopped")

    def begin_drain(self) -> None:
        """Refuse new commands from now on, and say NOT_SERVING."""
        self.drain.start_draining()
        self.health.set(draining=True)

    def drain_and_stop(self, seconds: float | None = None) -> bool:
        """Refuse new commands, let running ones finish (at most ``seconds``,
        default ``drain_seconds``), then stop; True if nothing was cut short."""
        seconds = self.service_options.drain_seconds if seconds is None else seconds
        self.begin_drain()
        logger.info(
            "draining: %d call(s) in flight, waiting up to %gs", self.drain.in_flight, seconds
        )
        idle = self.drain.wait_idle(seconds)
        if not idle:
            logger.warning(
                "drain time over with %d call(s) still in flight: cutting them",
                self.drain.in_flight,
            )
            self.drain.cut()
        self.stop()
        return idle

    def wait(self) -> None:
        """Block until the server is stopped (from another thread or a signal)."""
        if self._service is not None:
            self._service.wait()

    def __enter__(self) -> OfflineServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._service is not None

    @property
    def scheme(self) -> str:
        return "grpc+tls" if self.tls is not None else "grpc+tcp"

    @property
    def port(self) -> int:
        if self._service is None:
            raise RuntimeError("the server is not running")
        return self._service.port

    @property
    def location(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "::") else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def health_port(self) -> int | None:
        """The port of the gRPC health service, once started (None: not served)."""
        return self._side_ports.health_port

    @property
    def metrics_port(self) -> int | None:
        """The port of the Prometheus metrics, once started (None: not served)."""
        return self._side_ports.metrics_port

    def _tls_arguments(self) -> dict[str, Any]:
        if self.tls is None:
            return {}
        arguments: dict[str, Any] = {
            "tls_certificates": [(self.tls.cert_chain, self.tls.private_key)]
        }
        if self.tls.client_ca is not None:
            arguments.update(verify_client=True, root_certificates=self.tls.client_ca)
        return arguments

    # --- introspection -------------------------------------------------------------

    def stats_json(self, for_caller: bool = False) -> dict[str, Any]:
        """Server-wide figures. ``for_caller``: what any caller of the ``stats``
        action may see; on a server with authentication that leaves out the
        last error's text, which names other users' resources and commands."""
        staged = self.staging.summaries(everyone=True)
        figures = {
            "staged_commands": len(staged),
            "staged_bytes": sum(s.nbytes for s in staged),
            "workers": self._pool.load() if self._pool else None,
            # Databases open for requests (0 on an idle server: a client gone
            # mid-stream has freed its request's), rows the engine has read.
            "engine": asdict(self.dispatcher.engine.usage()),
            # Results kept for identical requests: hits, misses, entries, bytes.
            "result_reuse": self.dispatcher.reuse.stats(),
            **self.counts.stats(),
        }
        if for_caller and self.authenticator.enforces_permissions:
            figures["last_error"] = None
        return figures

    def health_json(self) -> dict[str, Any]:
        """What the ``healthcheck`` action answers."""
        return {**self.health.to_json(), "in_flight": self.drain.in_flight}

    def _gauges(self) -> Mapping[str, tuple[str, float]]:
        """What the metrics report at scrape time besides the counts."""
        load = self._pool.load() if self._pool is not None else {}
        return {
            "flightlab_staged_commands": ("Commands staged, not run yet", len(self.staging)),
            "flightlab_staged_bytes": ("Bytes staged by all clients", self.staging.staged_bytes),
            "flightlab_workers": ("Size of the worker pool", load.get("workers", 0)),
            "flightlab_workers_busy": ("Workers running a call", load.get("running", 0)),
            "flightlab_worker_queue_depth": ("Requests queued for a worker", load.get("queued", 0)),
            "flightlab_in_flight": ("RPCs and result streams in flight", self.drain.in_flight),
            "flightlab_draining": ("1 while the server drains", int(self.drain.draining)),
            "flightlab_ready": ("1 once the readiness probe passed", int(self.health.ready)),
            **{
                f"flightlab_reuse_{name}": (f"Kept results: {name}", value)
                for name, value in self.dispatcher.reuse.stats().items()
            },
        }

    def _sweep_expired(self) -> None:
        # Frees the memory of abandoned commands even when no request comes.
        period = min(self.limits.staged_ttl / 4, 30.0)
        while not self._stopped.wait(period):
            expired = self.staging.expire()
            if expired:
                logger.info("expired %d staged command(s) never run", expired)


def _export_location(uri: str | None) -> ExportLocation | None:
    return None if uri is None else ExportLocation(uri)


def _with_memory_limit(settings: EngineSettings, workers: int) -> EngineSettings:
    """``settings`` with a memory limit per request: the one given, else the
    machine's share for each of the ``workers`` (DuckDB's own default would
    let each request take 80 % of RAM, and a few at once outgrow it)."""
    if settings.memory_limit is not None:
        return settings
    return replace(settings, memory_limit=default_memory_limit(workers))
