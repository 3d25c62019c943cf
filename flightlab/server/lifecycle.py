"""The offline server's life cycle: :class:`OfflineServer` and its TLS settings.

:class:`OfflineServer` is what users start (from Python, a notebook or the
``flightlab serve_offline`` command). It owns the Feast store, the
dispatcher, the staged commands, the worker pool and the counters; its
:class:`~flightlab.server.service.FlightService` maps RPCs to requests and
calls back here to run them, so every request is counted and logged once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from flightlab.engine.results import ResultStream
from flightlab.engine.settings import EngineSettings
from flightlab.server import memory
from flightlab.server.auth import Caller, CallMiddlewareFactory
from flightlab.server.guards import check_request
from flightlab.server.limits import ServerLimits
from flightlab.server.operations import Operations, ServiceOptions
from flightlab.server.service import CALL_MIDDLEWARE, FlightService, caller_of, owner_of
from flightlab.server.staging import CommandStaging
from flightlab.server.stats import ServerStats
from flightlab.server.workers import ClosingIterator, WorkerPool
from flightlab.wire import protocol as p
from flightlab.wire import streaming
from flightlab.wire.errors import (
    INTERNAL,
    ClientGoneError,
    failure_status,
    shortened,
    to_flight_error,
)

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


class _Call:
    """What is known and logged about one RPC."""

    def __init__(self, rpc: str, caller: Caller, api: str | None, owner: str | None = None):
        self.rpc = rpc
        self.caller = caller
        self.owner = owner  # the key its staged commands belong to
        self.api = api
        self.command_id: str | None = None
        self.rows_in = 0
        self.rows_out = 0
        self.bytes_out = 0
        self.engine: str | None = None
        self.executed = False
        self.request: p.Request | None = None
        # A result streamed after the RPC handler returned: counted and logged
        # when its last batch has gone, not when the handler returns.
        self.streaming = False
        self.started = time.perf_counter()


class OfflineServer:
    """Serves a Feast repo's offline store over Arrow Flight.

    ``OfflineServer(repo_path)`` or ``OfflineServer(store=feature_store)``;
    ``start()`` serves from a background thread, ``stop()`` ends it, and the
    server is a context manager. ``port=0`` picks a free port: read
    :attr:`port` or :attr:`location` once started. Authentication follows the
    repo's ``auth`` config; ``tls`` serves over TLS (and mTLS with a client CA).
    ``engine`` says who answers retrievals (flightlab's DuckDB engine or the
    repo's Feast store) and with which resources; the default, ``auto``, uses
    the engine wherever it gives the Feast store's own answers.
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
        from flightlab.server.auth import authenticator_for
        from flightlab.server.dispatcher import OfflineDispatcher

        self.store = store
        self.limits = limits or ServerLimits()
        self.tls = tls
        self.authenticator = authenticator_for(store.config.auth_config)
        from flightlab.engine.runner import Engine

        self.engine_settings = engine or EngineSettings()
        self.dispatcher = OfflineDispatcher(
            store,
            enforce_permissions=self.authenticator.enforces_permissions,
            engine=Engine(self.engine_settings),
        )
        self.staging = CommandStaging(self.limits.staged_ttl, self.limits.max_staged_bytes)
        self.stats = ServerStats()
        # Health, metrics, drain and the advertised location (server/operations.py).
        self.ops = Operations(self, service)
        self.host = host
        self._requested_port = port
        self._pool: WorkerPool | None = None
        self._service: FlightService | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    # --- life cycle --------------------------------------------------------------

    def start(self) -> OfflineServer:
        if self._service is not None:
            raise RuntimeError("the server is already running")
        self._pool = WorkerPool(self.limits.workers, self.limits.queue_timeout)
        self._stopped.clear()
        self._service = FlightService(
            self,
            f"{self.scheme}://{self.host}:{self._requested_port}",
            middleware={CALL_MIDDLEWARE: CallMiddlewareFactory(self.authenticator)},
            **self._tls_arguments(),
        )
        self._thread = threading.Thread(
            target=self._service.serve, name="flightlab-server", daemon=True
        )
        self._thread.start()
        threading.Thread(target=self._sweep_expired, name="flightlab-sweeper", daemon=True).start()
        self.ops.start(self.host)
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
        self.ops.stop()
        service.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._pool is not None:
            self._pool.shutdown()
        logger.info("flightlab offline server stopped")

    def drain_and_stop(self, seconds: float | None = None) -> bool:
        """Refuse new commands, let running ones finish (at most ``seconds``,
        default ``drain_seconds``), then stop; True if nothing was cut short."""
        idle = self.ops.drain_until_idle(seconds)
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
            **self.stats.snapshot().to_json(),
        }
        if for_caller and self.authenticator.enforces_permissions:
            figures["last_error"] = None
        return figures

    def _sweep_expired(self) -> None:
        # Frees the memory of abandoned commands even when no request comes.
        period = min(self.limits.staged_ttl / 4, 30.0)
        while not self._stopped.wait(period):
            expired = self.staging.expire()
            if expired:
                logger.info("expired %d staged command(s) never run", expired)

    # --- helpers for the Flight service ------------------------------------------

    @contextmanager
    def _handling(self, rpc: str, context, api: str | None = None) -> Iterator[_Call]:
        call = _Call(rpc, caller_of(context), api, owner_of(context))
        with self.ops.drain.active():
            try:
                self.ops.drain.admit(rpc)
                yield call
            except Exception as exc:
                if not call.streaming:  # a streamed result records its own end
                    self._record_failure(call, exc)
                memory.release_soon()  # a refused upload may have been large
                raise to_flight_error(exc) from None
            self._record_success(call)
            if not call.streaming:
                _release_memory_after(call)

    def _execute(self, call: _Call, request: p.Request, context) -> Any:
        """Run a decoded request that returns no data on the worker pool."""
        call.rows_in = request.rows_in()
        call.request = request
        check_request(request, self.limits)
        assert self._pool is not None, "the server is not running"
        user = call.caller.user
        result = self._pool.run(lambda: self.dispatcher.run(request, user), context.is_cancelled)
        call.executed = True
        return result

    def _stream(
        self, call: _Call, request: p.Request, context
    ) -> tuple[pa.Schema, Iterator[tuple[pa.RecordBatch, bytes | None]]]:
        """Run a request that returns data: its schema, then (batch, metadata)
        pairs within the server's bounds as the worker produces them. The call
        is counted and logged once the last batch is out."""
        call.rows_in = request.rows_in()
        call.request = request
        check_request(request, self.limits)
        assert self._pool is not None, "the server is not running"
        user = call.caller.user
        limits = self.limits

        def open_stream() -> tuple[ResultStream, Iterator[pa.RecordBatch]]:
            result = self.dispatcher.run(request, user)
            bounded = streaming.bounded_stream(
                result.batches, limits.batch_rows, limits.max_batch_bytes
            )
            return result, ClosingIterator(bounded, result.close)

        result, batches = self._pool.stream(open_stream, context.is_cancelled)
        call.engine = result.engine
        call.executed = call.streaming = True
        pairs = streaming.stream_batches(
            result.schema, batches, (result.total_rows, result.total_bytes), context.is_cancelled
        )
        # A result stream outlives its RPC handler: a drain waits for it too.
        return result.schema, self.ops.drain.tracked(self._counted(call, pairs, batches))

    def _counted(
        self,
        call: _Call,
        pairs: Iterator[tuple[pa.RecordBatch, bytes | None]],
        source: Generator,
    ) -> Iterator[tuple[pa.RecordBatch, bytes | None]]:
        try:
            for batch, metadata in pairs:
                call.rows_out += batch.num_rows
                call.bytes_out += batch.nbytes
                yield batch, metadata
        except Exception as exc:
            self._record_failure(call, exc)
            raise to_flight_error(exc) from None
        except GeneratorExit:  # the stream was dropped: its client is gone
            self._record_failure(call, ClientGoneError("the client stopped reading"))
            raise
        finally:
            source.close()  # frees the worker however the stream ended
            _release_memory_after(call)
        self._record_success(call, finished_stream=True)

    def _record_success(self, call: _Call, finished_stream: bool = False) -> None:
        if call.streaming and not finished_stream:
            return  # counted when its last batch is out
        seconds = time.perf_counter() - call.started
        self.ops.observe(call)
        if not call.executed:
            logger.debug("%s %s command=%s %.3fs", call.rpc, call.api, call.command_id, seconds)
            return
        self.stats.record_success(
            call.api or "?", call.rows_in, call.rows_out, call.bytes_out, call.engine
        )
        logger.info(
            "%s command=%s user=%s engine=%s rows_in=%d rows_out=%d bytes_out=%d %.3fs",
            call.api,
            call.command_id,
            call.caller.name or "-",
            call.engine or "-",
            call.rows_in,
            call.rows_out,
            call.bytes_out,
            seconds,
        )

    def _record_failure(self, call: _Call, exc: Exception) -> None:
        api = call.api or call.rpc
        self.stats.record_error(api, exc)
        self.ops.observe(call, exc)
        if failure_status(exc) == INTERNAL:
            logger.exception("%s command=%s failed", api, call.command_id)
        else:
            logger.warning(
                "%s command=%s rejected: %s: %s",
                api,
                call.command_id,
                type(exc).__name__,
                shortened(str(exc)),
            )
        if call.command_id is not None:
            # Whatever failed, the command will not run: keep no state for it.
            self.staging.drop(call.command_id, call.owner)


def _release_memory_after(call: _Call) -> None:
    """Give a large call's memory back to the system (see server.memory)."""
    if call.rows_in + call.rows_out > 100_000 or call.bytes_out > memory.LARGE_CALL_BYTES:
        memory.release_soon()
