"""The Flight RPCs of the offline server, mapped to flightlab's requests.

:class:`FlightService` decodes each RPC into a request of
:mod:`flightlab.wire.protocol` (or, for Feast's own client,
:mod:`flightlab.wire.feast_protocol`), hands it to its
:class:`~flightlab.server.lifecycle.OfflineServer` to run, and encodes the
answer. It holds no state of its own: staged commands, workers and counters
belong to the server.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.flight as flight

from flightlab.server.auth import ANONYMOUS, Caller, CallMiddleware
from flightlab.server.guards import check_staged_parameter
from flightlab.server.ownership import owner_key
from flightlab.wire import feast_protocol, streaming
from flightlab.wire import protocol as p
from flightlab.wire.command_set import check_complete
from flightlab.wire.errors import ProtocolError

if TYPE_CHECKING:
    from flightlab.server.lifecycle import OfflineServer

# The header in which a client asks for compressed results ("zstd" or "lz4").
COMPRESSION_HEADER = "x-flightlab-compression"
COMPRESSIONS = ("zstd", "lz4")
CALL_MIDDLEWARE = "call"
ACTION_HEALTHCHECK = "healthcheck"

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
    ACTION_HEALTHCHECK: "Report readiness as JSON: status SERVING once the registry loaded "
    "and the offline store answered, NOT_SERVING before that and while draining.",
}


def _call_middleware(context) -> CallMiddleware | None:
    return context.get_middleware(CALL_MIDDLEWARE)


def caller_of(context) -> Caller:
    middleware = _call_middleware(context)
    return middleware.caller if middleware is not None else ANONYMOUS


def owner_of(context) -> str:
    """Whose commands this call may see and run (see flightlab.server.ownership)."""
    middleware = _call_middleware(context)
    headers = middleware.headers if middleware is not None else {}
    return owner_key(caller_of(context).name, headers, context.peer())


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


class FlightService(flight.FlightServerBase):
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
            check_staged_parameter(header.api, header.param, table, self._server.limits)
            self._server.staging.stage(call.command_id, header.api, header.param, table, call.owner)

    def _feast_put(self, context, call, command: feast_protocol.FeastCommand, reader) -> None:
        call.command_id, call.api = command.command_id, command.api
        request = feast_protocol.to_request(command, reader.read_all())
        if not request.returns_data:
            self._server._execute(call, request, context)  # Feast writes run on arrival
            return
        # Older Feast clients read with get_flight_info + do_get: stage the
        # request as flightlab parameters so the usual path serves it.
        for name, table in p.encode_request(request).items():
            self._server.staging.stage(command.command_id, command.api, name, table, call.owner)

    def get_flight_info(self, context, descriptor):
        with self._server._handling("get_flight_info", context) as call:
            feast_command = feast_protocol.parse_descriptor(descriptor)
            call.command_id = (
                feast_command.command_id
                if feast_command is not None
                else p.command_id_from_descriptor(descriptor)
            )
            staged = self._server.staging.peek(call.command_id, call.owner)
            call.api = staged.api
            p.decode_request(staged.api, check_complete(call.command_id, staged.params))
            if not p.api_type(staged.api).returns_data:
                raise ProtocolError(
                    f"{staged.api} returns no data: run it with do_action"
                    f"({staged.api!r}, body=<command id>), not do_get"
                )
            # Behind a load balancer, the replica holding the command names
            # itself, so the client's do_get reaches it (no location: "me").
            advertised = self._server.ops.advertise_location
            endpoint = flight.FlightEndpoint(
                p.ticket_bytes(call.command_id), [advertised] if advertised else []
            )
            return flight.FlightInfo(pa.schema([]), descriptor, [endpoint], -1, -1)

    def list_flights(self, context, criteria):
        # Each caller sees only the commands it staged.
        for staged in self._server.staging.summaries(owner_of(context)):
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
            staged = self._server.staging.take(call.command_id, call.owner)
            call.api = staged.api
            request = p.decode_request(staged.api, check_complete(call.command_id, staged.params))
            if not request.returns_data:
                raise ProtocolError(f"{staged.api} returns no data: run it with do_action")
            compression = _requested_compression(context)
            schema, batches = self._server._stream(call, request, context)
            return flight.GeneratorStream(
                schema, batches, options=streaming.write_options(compression)
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
            schema, batches = self._server._stream(call, request, context)
            writer.begin(schema)
            for batch, _totals in batches:
                writer.write_batch(batch)

    def do_action(self, context, action):
        with self._server._handling("do_action", context, action.type) as call:
            if action.type == p.ACTION_STATS:
                return [json.dumps(self._server.stats_json(for_caller=True)).encode()]
            if action.type == ACTION_HEALTHCHECK:
                return [json.dumps(self._server.ops.health_json()).encode()]
            call.command_id = p.command_id_from_ticket(action.body.to_pybytes())
            if action.type == p.ACTION_DROP:
                dropped = self._server.staging.drop(call.command_id, call.owner)
                return [json.dumps({"dropped": dropped}).encode()]
            if p.api_type(action.type).returns_data:
                raise ProtocolError(
                    f"{action.type} returns data: fetch it with get_flight_info and do_get"
                )
            staged = self._server.staging.take(call.command_id, call.owner)
            if staged.api != action.type:
                raise ProtocolError(
                    f"command {call.command_id} was staged for {staged.api!r}, "
                    f"not for action {action.type!r}"
                )
            request = p.decode_request(staged.api, check_complete(call.command_id, staged.params))
            return [json.dumps(self._server._execute(call, request, context)).encode()]

    def list_actions(self, context):
        return list(_ACTION_DESCRIPTIONS.items())
