"""The flightlab offline feature server: Feast's offline store over Arrow Flight.

:class:`OfflineServer` is what users start (from Python, a notebook or the
``flightlab serve_offline`` command). The Flight service inside it maps RPCs
to the requests of :mod:`flightlab.protocol` and hands them to one
:class:`~flightlab.dispatcher.OfflineDispatcher`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from flightlab import feast_protocol, streaming
from flightlab import protocol as p
from flightlab.auth import ANONYMOUS, Caller, CallMiddleware, CallMiddlewareFactory
from flightlab.errors import INTERNAL, ProtocolError, failure_status, to_flight_error
from flightlab.limits import ServerLimits
from flightlab.staging import CommandStaging
from flightlab.stats import ServerStats
from flightlab.workers import WorkerPool

logger = logging.getLogger("flightlab.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8815
# The header in which a client asks for compressed results ("zstd" or "lz4").
COMPRESSION_HEADER = "x-flightlab-compression"
COMPRESSIONS = ("zstd", "lz4")
_CALL_MIDDLEWARE = "call"

_ACTION_DESCRIPTIONS = {
    "offline_write_batch": "Run a staged offline_write_batch: append the staged "
    "'table' to the batch source of feature view 'feature_view_name'.",
    "write_logged_features": "Run a staged write_logged_features: write the staged "
    "'data' to the logging destination of feature service 'feature_service_name'.",
    "persist": "Run a staged persist: execute the staged retrieval and save its "
    "result to the staged 'storage' or 'destination_name'.",
    "validate_data_source": "Run a staged validate_data_source: check that the "
    "staged 'data_source' exists and can be read by the offline store.",
    p.ACTION_DROP: "Drop a staged command without running it (body: the command id).",
    p.ACTION_STATS: "Report staged commands, requests served per API and errors, as JSON.",
}


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


def _call_middleware(context) -> CallMiddleware | None:
    return context.get_middleware(_CALL_MIDDLEWARE)


def _caller(context) -> Caller:
    middleware = _call_middleware(context)
    return middleware.caller if middleware is not None else ANONYMOUS


def _requested_compression(context) -> str | None:
    middleware = _call_middleware(context)
    values = middleware.headers.get(COMPRESSION_HEADER, []) if middleware else []
    if not values:
        return None
    if values[0] not in COMPRESSIONS:
        raise ProtocolError(
            f"unknown compression {values[0]!r} in header {COMPRESSION_HEADER}; "
            f"use one of {', '.join(COMPRESSIONS)}"
        )
    return values[0]


class _FlightService(flight.FlightServerBase):
    """The Flight RPCs: decode each call into a request of flightlab.protocol,
    run it through the server, encode the answer.

    Two protocols arrive here, told apart by what they send: flightlab's
    (parameters in do_put schema metadata, a UUID descriptor) and that of
    Feast's own offline server (a JSON command in the descriptor).
    """

    def __init__(self, server: OfflineServer, location: str, **kwargs: Any):
        super().__init__(location, **kwargs)
        self._server = server

    # --- staging -------------------------------------------------------------

    def do_put(self, context, descriptor, reader, writer):
        with self._server._handling("do_put", context) as call:
            feast_command = feast_protocol.parse_descriptor(descriptor)
            if feast_command is not None:
                return self._feast_put(context, call, feast_command, reader)
            call.command_id = p.command_id_from_descriptor(descriptor)
            header = p.read_put_header(reader.schema, call.command_id)
            call.api = header.api
            table = p.strip_protocol_metadata(reader.read_all())
            call.rows_in = table.num_rows
            self._server.staging.stage(
                call.command_id, header.api, header.param, table, call.caller.name
            )

    def _feast_put(self, context, call, command: feast_protocol.FeastCommand, reader) -> None:
        call.command_id, call.api = command.command_id, command.api
        request = feast_protocol.to_request(command, reader.read_all())
        if not request.returns_data:
            self._server._execute(call, request, context)  # Feast writes run on arrival
            return
        # Older Feast clients read with get_flight_info + do_get: stage the
        # request as flightlab parameters so the usual path serves it.
        for name, table in p.encode_request(request).items():
            self._server.staging.stage(
                command.command_id, command.api, name, table, call.caller.name
            )

    def get_flight_info(self, context, descriptor):
        with self._server._handling("get_flight_info", context) as call:
            feast_command = feast_protocol.parse_descriptor(descriptor)
            call.command_id = (
                feast_command.command_id
                if feast_command is not None
                else p.command_id_from_descriptor(descriptor)
            )
            staged = self._server.staging.peek(call.command_id, call.caller.name)
            call.api = staged.api
            p.decode_request(staged.api, staged.params)  # fail early on bad input
            if not p.api_type(staged.api).returns_data:
                raise ProtocolError(
                    f"{staged.api} returns no data: run it with do_action"
                    f"({staged.api!r}, body=<command id>), not do_get"
                )
            endpoint = flight.FlightEndpoint(p.ticket_bytes(call.command_id), [])
            return flight.FlightInfo(pa.schema([]), descriptor, [endpoint], -1, -1)

    def list_flights(self, context, criteria):
        # Each caller sees only the commands it staged.
        for staged in self._server.staging.summaries(_caller(context).name):
            yield flight.FlightInfo(
                pa.schema([]),
                p.command_descriptor(staged.command_id),
                [flight.FlightEndpoint(p.ticket_bytes(staged.command_id), [])],
                -1,
                staged.nbytes,
            )

    # --- running ---------------------------------------------------------------

    def do_get(self, context, ticket):
        with self._server._handling("do_get", context) as call:
            call.command_id = p.command_id_from_ticket(ticket.ticket)
            staged = self._server.staging.take(call.command_id, call.caller.name)
            call.api = staged.api
            request = p.decode_request(staged.api, staged.params)
            if not request.returns_data:
                raise ProtocolError(f"{staged.api} returns no data: run it with do_action")
            compression = _requested_compression(context)
            table = self._server._execute(call, request, context)
            return flight.GeneratorStream(
                table.schema,
                self._server._result_batches(table, context),
                options=streaming.write_options(compression),
            )

    def do_exchange(self, context, descriptor, reader, writer):
        with self._server._handling("do_exchange", context) as call:
            # Read the upload before any check: a client still writing when the
            # call fails would see a broken stream instead of the error.
            uploaded = reader.read_all()
            command = feast_protocol.parse_descriptor(descriptor)
            if command is None:
                raise ProtocolError(
                    "do_exchange takes a Feast JSON command; flightlab's own "
                    "protocol reads with get_flight_info and do_get"
                )
            call.command_id, call.api = command.command_id, command.api
            request = feast_protocol.to_request(command, uploaded)
            if not request.returns_data:
                raise ProtocolError(f"{command.api} returns no data: send it with do_put")
            table = self._server._execute(call, request, context)
            writer.begin(table.schema)
            for batch, _totals in self._server._result_batches(table, context):
                writer.write_batch(batch)

    def do_action(self, context, action):
        with self._server._handling("do_action", context, action.type) as call:
            if action.type == p.ACTION_STATS:
                return [json.dumps(self._server.stats_json(for_caller=True)).encode()]
            call.command_id = p.command_id_from_ticket(action.body.to_pybytes())
            if action.type == p.ACTION_DROP:
                dropped = self._server.staging.drop(call.command_id, call.caller.name)
                return [json.dumps({"dropped": dropped}).encode()]
            if p.api_type(action.type).returns_data:
                raise ProtocolError(
                    f"{action.type} returns data: fetch it with get_flight_info and do_get"
                )
            staged = self._server.staging.take(call.command_id, call.caller.name)
            if staged.api != action.type:
                raise ProtocolError(
                    f"command {call.command_id} was staged for {staged.api!r}, "
                    f"not for action {action.type!r}"
                )
            request = p.decode_request(staged.api, staged.params)
            return [json.dumps(self._server._execute(call, request, context)).encode()]

    def list_actions(self, context):
        return list(_ACTION_DESCRIPTIONS.items())


class _Call:
    """What is known and logged about one RPC."""

    def __init__(self, rpc: str, caller: Caller, api: str | None):
        self.rpc = rpc
        self.caller = caller
        self.api = api
        self.command_id: str | None = None
        self.rows_in = 0
        self.rows_out = 0
        self.bytes_out = 0
        self.executed = False
        self.started = time.perf_counter()


class OfflineServer:
    """Serves a Feast repo's offline store over Arrow Flight.

    ``OfflineServer(repo_path)`` or ``OfflineServer(store=feature_store)``;
    ``start()`` serves from a background thread, ``stop()`` ends it, and the
    server is a context manager. ``port=0`` picks a free port: read
    :attr:`port` or :attr:`location` once started. Authentication follows the
    repo's ``auth`` config; ``tls`` serves over TLS (and mTLS with a client CA).
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
    ):
        if (repo_path is None) == (store is None):
            raise ValueError("give exactly one of repo_path and store")
        if store is None:
            from feast import FeatureStore

            store = FeatureStore(repo_path=str(repo_path))
        from flightlab.auth import authenticator_for
        from flightlab.dispatcher import OfflineDispatcher

        self.store = store
        self.limits = limits or ServerLimits()
        self.tls = tls
        self.authenticator = authenticator_for(store.config.auth_config)
        self.dispatcher = OfflineDispatcher(
            store, enforce_permissions=self.authenticator.enforces_permissions
        )
        self.staging = CommandStaging(self.limits.staged_ttl, self.limits.max_staged_bytes)
        self.stats = ServerStats()
        self.host = host
        self._requested_port = port
        self._pool: WorkerPool | None = None
        self._service: _FlightService | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    # --- life cycle --------------------------------------------------------------

    def start(self) -> OfflineServer:
        if self._service is not None:
            raise RuntimeError("the server is already running")
        self._pool = WorkerPool(self.limits.workers, self.limits.queue_timeout)
        self._stopped.clear()
        self._service = _FlightService(
            self,
            f"{self.scheme}://{self.host}:{self._requested_port}",
            middleware={_CALL_MIDDLEWARE: CallMiddlewareFactory(self.authenticator)},
            **self._tls_arguments(),
        )
        self._thread = threading.Thread(
            target=self._service.serve, name="flightlab-server", daemon=True
        )
        self._thread.start()
        threading.Thread(target=self._sweep_expired, name="flightlab-sweeper", daemon=True).start()
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
        service.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._pool is not None:
            self._pool.shutdown()
        logger.info("flightlab offline server stopped")

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
        call = _Call(rpc, _caller(context), api)
        try:
            yield call
        except Exception as exc:
            self._record_failure(call, exc)
            raise to_flight_error(exc) from None
        self._record_success(call)

    def _execute(self, call: _Call, request: p.Request, context) -> Any:
        """Run a decoded request on the worker pool; note its rows for the log."""
        call.rows_in = request.rows_in()
        assert self._pool is not None, "the server is not running"
        user = call.caller.user
        result = self._pool.run(lambda: self.dispatcher.run(request, user), context.is_cancelled)
        if isinstance(result, pa.Table):
            call.rows_out, call.bytes_out = result.num_rows, result.nbytes
        call.executed = True
        return result

    def _record_success(self, call: _Call) -> None:
        seconds = time.perf_counter() - call.started
        if not call.executed:
            logger.debug("%s %s command=%s %.3fs", call.rpc, call.api, call.command_id, seconds)
            return
        self.stats.record_success(call.api or "?", call.rows_in, call.rows_out, call.bytes_out)
        logger.info(
            "%s command=%s user=%s rows_in=%d rows_out=%d bytes_out=%d %.3fs",
            call.api,
            call.command_id,
            call.caller.name or "-",
            call.rows_in,
            call.rows_out,
            call.bytes_out,
            seconds,
        )

    def _record_failure(self, call: _Call, exc: Exception) -> None:
        api = call.api or call.rpc
        self.stats.record_error(api, exc)
        if failure_status(exc) == INTERNAL:
            logger.exception("%s command=%s failed", api, call.command_id)
        else:
            logger.warning(
                "%s command=%s rejected: %s: %s", api, call.command_id, type(exc).__name__, exc
            )
        if call.command_id is not None:
            # Whatever failed, the command will not run: keep no state for it.
            self.staging.drop(call.command_id, call.caller.name)

    def _result_batches(self, table: pa.Table, context):
        return streaming.result_batches(
            table, self.limits.batch_rows, self.limits.max_batch_bytes, context.is_cancelled
        )
