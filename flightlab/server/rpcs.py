"""The Flight RPCs of the offline server, mapped to flightlab's requests.

:class:`FlightService` decodes each RPC into a request of
:mod:`flightlab.wire.protocol` (or, for Feast's own client,
:mod:`flightlab.wire.feast_protocol`), hands it to the
:class:`~flightlab.server.calls.CallRunner` to run, and encodes the answer.
It holds no state of its own: it is given the staged commands, the caps, the
server's own actions and the location it advertises.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import closing
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from flightlab.errors import ProtocolError
from flightlab.server.auth import CALL_MIDDLEWARE, owner_of
from flightlab.server.calls import CallRunner
from flightlab.server.caps import read_staged_parameter
from flightlab.server.limits import ServerLimits
from flightlab.server.partitions import partition_count, partition_of
from flightlab.server.staging import CommandStaging, StagedCommand
from flightlab.wire import actions, feast_protocol, protocol, streaming
from flightlab.wire.headers import COMPRESSION_HEADER, COMPRESSIONS, PARTITIONS_HEADER
from flightlab.wire.manifest import check_complete

# The server's own actions: name -> what to answer (JSON-able).
ServerActions = Mapping[str, Callable[[], Any]]


def _header(context, name: str) -> str | None:
    middleware = context.get_middleware(CALL_MIDDLEWARE)
    values = middleware.headers.get(name, []) if middleware else []
    return values[0] if values else None


def _requested_partitions(context) -> int:
    value = _header(context, PARTITIONS_HEADER)
    if value is None:
        return 1
    if not value.isdigit() or int(value) < 1:
        raise ProtocolError(f"header {PARTITIONS_HEADER} must be a positive number, not {value!r}")
    return int(value)


def _requested_compression(context) -> str | None:
    value = _header(context, COMPRESSION_HEADER)
    if value is not None and value not in COMPRESSIONS:
        raise ProtocolError(
            f"unknown compression {value!r} in header {COMPRESSION_HEADER}; "
            f"use one of {', '.join(COMPRESSIONS)}"
        )
    return value


class FlightService(flight.FlightServerBase):
    """The Flight RPCs: decode each call into a request of flightlab.protocol,
    run it through the server, encode the answer.

    Two protocols arrive here, told apart by what they send: flightlab's
    (parameters in do_put schema metadata, a UUID descriptor) and that of
    Feast's own offline server (a JSON command in the descriptor).
    """

    def __init__(
        self,
        location: str,
        *,
        runner: CallRunner,
        staging: CommandStaging,
        limits: ServerLimits,
        server_actions: ServerActions,
        advertise_location: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(location, **kwargs)
        self._runner = runner
        self._staging = staging
        self._limits = limits
        self._server_actions = server_actions
        self._advertise_location = advertise_location

    # --- staging -------------------------------------------------------------

    def do_put(self, context, descriptor, reader, writer):
        with self._runner.handling("do_put", context) as call:
            feast_command = feast_protocol.parse_descriptor(descriptor)
            if feast_command is not None:
                return self._feast_put(context, call, feast_command, reader)
            call.command_id = protocol.command_id_from_descriptor(descriptor)
            header = protocol.read_put_header(reader.schema, call.command_id)
            call.api = header.api
            table = read_staged_parameter(
                header.api, header.param, reader, self._limits, self._staging.check_room
            )
            table = protocol.strip_protocol_metadata(table)
            call.rows_in = table.num_rows
            self._staging.stage(call.command_id, header.api, header.param, table, call.owner)

    def _feast_put(self, context, call, command: feast_protocol.FeastCommand, reader) -> None:
        call.command_id, call.api = command.command_id, command.api
        request = feast_protocol.to_request(command, reader.read_all())
        if not request.returns_data:
            self._runner.execute(call, request, context)  # Feast writes run on arrival
            return
        # Older Feast clients read with get_flight_info + do_get: stage the
        # request as flightlab parameters so the usual path serves it.
        for name, table in protocol.encode_request(request).items():
            self._staging.stage(command.command_id, command.api, name, table, call.owner)

    def get_flight_info(self, context, descriptor):
        with self._runner.handling("get_flight_info", context) as call:
            feast_command = feast_protocol.parse_descriptor(descriptor)
            call.command_id = (
                feast_command.command_id
                if feast_command is not None
                else protocol.command_id_from_descriptor(descriptor)
            )
            staged = self._staging.peek(call.command_id, call.owner)
            call.api = staged.api
            request = _request_of(staged)
            if not request.returns_data:
                raise ProtocolError(
                    f"{staged.api} returns no data: run it with do_action"
                    f"({staged.api!r}, body=<command id>), not do_get"
                )
            wanted = partition_count(request, _requested_partitions(context), self._limits)
            count = self._staging.serve_in_partitions(call.command_id, call.owner, wanted)
            # Behind a load balancer, the replica holding the command names
            # itself, so the client's do_get reaches it (no location: "me").
            advertised = self._advertise_location
            endpoints = [
                flight.FlightEndpoint(
                    protocol.PartitionTicket(call.command_id, index, count).to_bytes(),
                    [advertised] if advertised else [],
                )
                for index in range(count)
            ]
            return flight.FlightInfo(pa.schema([]), descriptor, endpoints, -1, -1)

    def list_flights(self, context, criteria):
        # Each caller sees only the commands it staged.
        for staged in self._staging.summaries(owner_of(context)):
            yield flight.FlightInfo(
                pa.schema([]),
                protocol.command_descriptor(staged.command_id),
                [flight.FlightEndpoint(protocol.ticket_bytes(staged.command_id), [])],
                -1,
                staged.nbytes,
            )

    # --- running ---------------------------------------------------------------

    def do_get(self, context, ticket):
        with self._runner.handling("do_get", context) as call:
            part = protocol.PartitionTicket.parse(ticket.ticket)
            staged = self._staging.take_part(part.command_id, call.owner, part.index, part.count)
            # Named only once handed out: a ticket read twice fails without
            # dropping the command's other partitions (other workers' shards).
            call.command_id = part.command_id
            call.api = staged.api
            request = _request_of(staged)
            if not request.returns_data:
                raise ProtocolError(f"{staged.api} returns no data: run it with do_action")
            request = partition_of(request, part.index, part.count)
            compression = _requested_compression(context)
            schema, batches = self._runner.stream(call, request, context)
            return flight.GeneratorStream(
                schema, batches, options=streaming.write_options(compression)
            )

    def do_exchange(self, context, descriptor, reader, writer):
        with self._runner.handling("do_exchange", context) as call:
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
            schema, batches = self._runner.stream(call, request, context)
            with closing(batches):  # ended at once should the client leave midway
                writer.begin(schema)
                for batch, _totals in batches:
                    writer.write_batch(batch)

    def do_action(self, context, action):
        with self._runner.handling("do_action", context, action.type) as call:
            if action.type in self._server_actions:
                return [json.dumps(self._server_actions[action.type]()).encode()]
            call.command_id = protocol.command_id_from_ticket(action.body.to_pybytes())
            if action.type == actions.ACTION_DROP:
                dropped = self._staging.drop(call.command_id, call.owner)
                return [json.dumps({"dropped": dropped}).encode()]
            if protocol.api_type(action.type).returns_data:
                raise ProtocolError(
                    f"{action.type} returns data: fetch it with get_flight_info and do_get"
                )
            staged = self._staging.take(call.command_id, call.owner)
            if staged.api != action.type:
                raise ProtocolError(
                    f"command {call.command_id} was staged for {staged.api!r}, "
                    f"not for action {action.type!r}"
                )
            request = _request_of(staged)
            return [json.dumps(self._runner.execute(call, request, context)).encode()]

    def list_actions(self, context):
        return list(actions.DESCRIPTIONS.items())


def _request_of(staged: StagedCommand) -> protocol.Request:
    """The request a staged command makes, once sure all its parameters are here."""
    return protocol.decode_request(staged.api, check_complete(staged.command_id, staged.params))
