"""Commands, their descriptors and tickets: what a do_put, get_flight_info and
do_get name. A one-stream result's ticket is its command id; a partition's
adds its index and the partition count."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from flightlab.errors import quoted
from flightlab.wire.flight_errors import UnknownCommandError
from flightlab.wire.params import decode_text


def new_command_id() -> str:
    return str(uuid.uuid4())


def command_descriptor(command_id: str):
    import pyarrow.flight as flight

    return flight.FlightDescriptor.for_command(command_id.encode())


def command_id_from_descriptor(descriptor) -> str:
    """The command id a FlightDescriptor names (by command or by path)."""
    if descriptor.command:
        raw = descriptor.command
    elif descriptor.path:
        raw = b"/".join(p if isinstance(p, bytes) else p.encode() for p in descriptor.path)
    else:
        raise UnknownCommandError("the flight descriptor names no command")
    return decode_text(raw, "flight descriptor")


def ticket_bytes(command_id: str) -> bytes:
    return command_id.encode()


def command_id_from_ticket(ticket: bytes) -> str:
    return decode_text(ticket, "ticket")


@dataclass(frozen=True)
class PartitionTicket:
    """A ticket for part ``index`` of ``count`` of a command's result (a ticket
    of a one-stream result names the command alone: index 0 of 1)."""

    command_id: str
    index: int = 0
    count: int = 1

    def to_bytes(self) -> bytes:
        if self.count == 1:
            return ticket_bytes(self.command_id)
        return f"{self.command_id}{_PART_MARK}{self.index}/{self.count}".encode()

    @classmethod
    def parse(cls, ticket: bytes) -> PartitionTicket:
        text = command_id_from_ticket(ticket)
        command_id, mark, part = text.partition(_PART_MARK)
        if not mark:
            return cls(command_id)
        index, _, count = part.partition("/")
        if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
            raise UnknownCommandError(f"malformed partition ticket {quoted(text)}")
        return cls(command_id, int(index), int(count))


# Between a command id (a UUID: hex digits and dashes) and its part in a ticket.
_PART_MARK = "#part="
