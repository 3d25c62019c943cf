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
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from flightlab import feast_protocol, streaming
from flightlab import protocol as p
from flightlab.errors import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    INTERNAL,
    INVALID_ARGUMENT,
    NOT_FOUND,
    PERMISSION_DENIED,
    RESOURCE_EXHAUSTED,
    UNAUTHENTICATED,
    UNAVAILABLE,
    FlightlabError,
    ProtocolError,
    encode_detail,
    error_detail,
)
from flightlab.limits import ServerLimits
from flightlab.staging import CommandStaging
from flightlab.stats import ServerStats, StatsSnapshot
from flightlab.workers import ClientGoneError, WorkerPool

logger = logging.getLogger("flightlab.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8815
# The header in which a client asks for compressed results ("zstd" or "lz4").
COMPRESSION_HEADER = "x-flightlab-compression"
COMPRESSIONS = ("zstd", "lz4")


# Which Flight error class a failure of each kind becomes. Flight has no
# "invalid argument" or "not found" class, so bad requests are server errors
# whose detail (module, class, message, status) says exactly what was wrong.
_FLIGHT_ERROR_FOR_STATUS: dict[str, type[flight.FlightError]] = {
    INVALID_ARGUMENT: flight.FlightServerError,
    NOT_FOUND: flight.FlightServerError,
    "unimplemented": flight.FlightServerError,
    RESOURCE_EXHAUSTED: flight.FlightUnavailableError,
    UNAVAILABLE: flight.FlightUnavailableError,
    UNAUTHENTICATED: flight.FlightUnauthenticatedError,
    PERMISSION_DENIED: flight.FlightUnauthorizedError,
    CANCELLED: flight.FlightCancelledError,
    DEADLINE_EXCEEDED: flight.FlightTimedOutError,
    INTERNAL: flight.FlightInternalError,
}

_ACTION_DESCRIPTIONS = {
    "offline_write_batch": "Run a staged offline_write_batch: append the staged "
    "'table' to the batch source of feature view 'feature_view_name'.",
    "write_logged_features": "Run a staged write_logged_features: write the staged "
    "'data' to the logging destination of feature service 'feature_service_name'.",
    "persist": "Run a staged persist: execute the staged retrieval and save its "
    "result to the staged 'storage'.",
    "validate_data_source": "Run a staged validate_data_source: check that the "
    "staged 'data_source' exists and can be read by the offline store.",
    p.ACTION_DROP: "Drop a staged command without running it (body: the command id).",
    p.ACTION_STATS: "Report staged commands, requests served per API and errors, as JSON.",
}


def failure_status(exc: BaseException) -> str:
    """What kind of failure ``exc`` is, in the vocabulary of flightlab.errors."""
    from feast.errors import FeastObjectNotFoundException, FeastPermissionError

    if isinstance(exc, FlightlabError):
        return exc.status
    if isinstance(exc, ClientGoneError):
        return CANCELLED
    if isinstance(exc, FeastPermissionError):
        return PERMISSION_DENIED
    if isinstance(exc, FeastObjectNotFoundException):
        return NOT_FOUND
    if _is_input_error(exc):
        return INVALID_ARGUMENT
    return INTERNAL


def _is_input_error(exc: BaseException) -> bool:
    from feast.errors import FeastError

    # Feast and pyarrow report bad input (an entity frame without a timestamp,
    # a column of the wrong type, an unknown ref) with these classes.
    return isinstance(exc, (FeastError, ValueError, KeyError, TypeError, pa.ArrowException))


def to_flight_error(exc: BaseException) -> flight.FlightError:
    """The Flight error a client receives for ``exc``: never a traceback."""
    if isinstance(exc, flight.FlightError):
        return exc
    status = failure_status(exc)
    detail = encode_detail(error_detail(exc, status))
    error_class = _FLIGHT_ERROR_FOR_STATUS[status]
    # "Flight error: <json>" is the form Feast's own remote client parses.
    return error_class(f"Flight error: {detail}", extra_info=detail.encode())


class _HeadersMiddleware(flight.ServerMiddleware):
    def __init__(self, headers: dict[str, list[str]]):
        self.headers = headers


class _HeadersMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Keeps each call's request headers where its handler can read them."""

    def start_call(self, info, headers):
        return _HeadersMiddleware(headers)


def _requested_compression(context) -> str | None:
    middleware = context.get_middleware("headers")
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
    run it through the owner, encode the answer.

    Two protocols arrive here, told apart by what they send: flightlab's
    (parameters in do_put schema metadata, a UUID descriptor) and that of
    Feast's own offline server (a JSON command in the descriptor).
    """

    def __init__(self, owner: OfflineServer, location: str, **kwargs: Any):
        super().__init__(location, **kwargs)
        self._owner = owner

    # --- staging -------------------------------------------------------------

    def do_put(self, context, descriptor, reader, writer):
        with self._owner._handling("do_put", None) as call:
            feast_command = feast_protocol.parse_descriptor(descriptor)
            if feast_command is not None:
                return self._feast_put(context, call, feast_command, reader)
            command_id = p.command_id_from_descriptor(descriptor)
            call.command_id = command_id
            header = p.read_put_header(reader.schema, command_id)
            call.api = header.api
            table = p.strip_protocol_metadata(reader.read_all())
            call.rows_in = table.num_rows
            self._owner.staging.stage(command_id, header.api, header.param, table)

    def _feast_put(
        self, context, call: _Call, command: feast_protocol.FeastCommand, reader
    ) -> None:
        call.command_id, call.api = command.command_id, command.api
        request = feast_protocol.to_request(command, reader.read_all())
        if request.returns_data:
            # Older Feast clients read with get_flight_info + do_get: stage the
            # request as flightlab parameters so the usual path serves it.
            for name, table in p.encode_request(request).items():
                self._owner.staging.stage(command.command_id, command.api, name, table)
        else:
            self._owner._execute(call, request, context)

    def get_flight_info(self, context, descriptor):
        with self._owner._handling("get_flight_info", None) as call:
            feast_command = feast_protocol.parse_descriptor(descriptor)
            command_id = (
                feast_command.command_id
                if feast_command is not None
                else p.command_id_from_descriptor(descriptor)
            )
            call.command_id = command_id
            staged = self._owner.staging.peek(command_id)
            call.api = staged.api
            p.decode_request(staged.api, staged.params)  # fail early on bad input
            if not p.api_type(staged.api).returns_data:
                raise ProtocolError(
                    f"{staged.api} returns no data: run it with do_action"
                    f"({staged.api!r}, body=<command id>), not do_get"
                )
            endpoint = flight.FlightEndpoint(p.ticket_bytes(command_id), [])
            return flight.FlightInfo(pa.schema([]), descriptor, [endpoint], -1, -1)

    def list_flights(self, context, criteria):
        for staged in self._owner.staging.summaries():
            yield flight.FlightInfo(
                pa.schema([]),
                p.command_descriptor(staged.command_id),
                [flight.FlightEndpoint(p.ticket_bytes(staged.command_id), [])],
                -1,
                staged.nbytes,
            )

    # --- running ---------------------------------------------------------------

    def do_get(self, context, ticket):
        with self._owner._handling("do_get", None) as call:
            call.command_id = p.command_id_from_ticket(ticket.ticket)
            staged = self._owner.staging.take(call.command_id)
            call.api = staged.api
            request = p.decode_request(staged.api, staged.params)
            if not request.returns_data:
                raise ProtocolError(f"{staged.api} returns no data: run it with do_action")
            compression = _requested_compression(context)
            table = self._owner._execute(call, request, context)
            batches = self._owner._result_batches(table, context)
            return flight.GeneratorStream(
                table.schema, batches, options=streaming.write_options(compression)
            )

    def do_exchange(self, context, descriptor, reader, writer):
        with self._owner._handling("do_exchange", None) as call:
            command = feast_protocol.parse_descriptor(descriptor)
            if command is None:
                raise ProtocolError(
                    "do_exchange takes a Feast JSON command; flightlab's own "
                    "protocol reads with get_flight_info and do_get"
                )
            call.command_id, call.api = command.command_id, command.api
            request = feast_protocol.to_request(command, reader.read_all())
            if not request.returns_data:
                raise ProtocolError(f"{command.api} returns no data: send it with do_put")
            table = self._owner._execute(call, request, context)
            writer.begin(table.schema)
            for batch, _totals in self._owner._result_batches(table, context):
                writer.write_batch(batch)

    def do_action(self, context, action):
        if action.type == p.ACTION_STATS:
            return [json.dumps(self._owner.stats_json()).encode()]
        with self._owner._handling("do_action", action.type) as call:
            call.command_id = p.command_id_from_ticket(action.body.to_pybytes())
            if action.type == p.ACTION_DROP:
                dropped = self._owner.staging.drop(call.command_id)
                return [json.dumps({"dropped": dropped}).encode()]
            if p.api_type(action.type).returns_data:
                raise ProtocolError(
                    f"{action.type} returns data: fetch it with get_flight_info and do_get"
                )
            staged = self._owner.staging.take(call.command_id)
            if staged.api != action.type:
                raise ProtocolError(
                    f"command {call.command_id} was staged for {staged.api!r}, "
                    f"not for action {action.type!r}"
                )
            request = p.decode_request(staged.api, staged.params)
            return [json.dumps(self._owner._execute(call, request, context)).encode()]

    def list_actions(self, context):
        return list(_ACTION_DESCRIPTIONS.items())


class _Call:
    """What is logged about one RPC."""

    def __init__(self, rpc: str, api: str | None):
        self.rpc = rpc
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
    :attr:`port` or :attr:`location` once started.
    """

    def __init__(
        self,
        repo_path: str | Path | None = None,
        *,
        store: Any = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        limits: ServerLimits | None = None,
    ):
        if (repo_path is None) == (store is None):
            raise ValueError("give exactly one of repo_path and store")
        if store is None:
            from feast import FeatureStore

            store = FeatureStore(repo_path=str(repo_path))
        from flightlab.dispatcher import OfflineDispatcher

        self.store = store
        self.limits = limits or ServerLimits()
        self.dispatcher = OfflineDispatcher(store)
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
            f"grpc+tcp://{self.host}:{self._requested_port}",
            middleware={"headers": _HeadersMiddlewareFactory()},
        )
        self._thread = threading.Thread(
            target=self._service.serve, name="flightlab-server", daemon=True
        )
        self._thread.start()
        threading.Thread(target=self._sweep_expired, name="flightlab-sweeper", daemon=True).start()
        logger.info("flightlab offline server serving %s at %s", self.store.project, self.location)
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
    def port(self) -> int:
        if self._service is None:
            raise RuntimeError("the server is not running")
        return self._service.port

    @property
    def location(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "::") else self.host
        return f"grpc+tcp://{host}:{self.port}"

    # --- introspection -------------------------------------------------------------

    def stats_snapshot(self) -> StatsSnapshot:
        return self.stats.snapshot()

    def stats_json(self) -> dict[str, Any]:
        staged = self.staging.summaries()
        return {
            "staged_commands": len(staged),
            "staged_bytes": sum(s.nbytes for s in staged),
            "workers": self._pool.load() if self._pool else None,
            **self.stats.snapshot().to_json(),
        }

    def _sweep_expired(self) -> None:
        # Frees the memory of abandoned commands even when no request comes.
        period = min(self.limits.staged_ttl / 4, 30.0)
        while not self._stopped.wait(period):
            expired = self.staging.expire()
            if expired:
                logger.info("expired %d staged command(s) never run", expired)

    # --- helpers for the Flight service ------------------------------------------

    @contextmanager
    def _handling(self, rpc: str, api: str | None) -> Iterator[_Call]:
        call = _Call(rpc, api)
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
        result = self._pool.run(lambda: self.dispatcher.run(request), context.is_cancelled)
        if isinstance(result, pa.Table):
            call.rows_out, call.bytes_out = result.num_rows, result.nbytes
        call.executed = True
        return result

    def _record_success(self, call: _Call) -> None:
        seconds = time.perf_counter() - call.started
        if call.executed:
            self.stats.record_success(call.api or "?", call.rows_in, call.rows_out, call.bytes_out)
            logger.info(
                "%s command=%s rows_in=%d rows_out=%d bytes_out=%d %.3fs",
                call.api,
                call.command_id,
                call.rows_in,
                call.rows_out,
                call.bytes_out,
                seconds,
            )
        else:
            logger.debug("%s %s command=%s %.3fs", call.rpc, call.api, call.command_id, seconds)

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
            self.staging.drop(call.command_id)

    def _result_batches(self, table: pa.Table, context):
        return streaming.result_batches(
            table, self.limits.batch_rows, self.limits.max_batch_bytes, context.is_cancelled
        )
