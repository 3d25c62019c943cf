"""Tickets: what a do_get names. A one-stream result's ticket is its command
id; a partition's adds its index and the partition count."""

from __future__ import annotations

from dataclasses import dataclass

from flightlab.errors import quoted
from flightlab.wire.flight_errors import UnknownCommandError
from flightlab.wire.params import decode_text


@dataclass(frozen=True)
class PartitionTicket:
    """A ticket for part ``index`` of ``count`` of a command's result (a ticket
    of a one-stream result names the command alone: index 0 of 1)."""

    command_id: str
    index: int = 0
    count: int = 1

    def to_bytes(self) -> bytes:
        if self.count == 1:
            return self.command_id.encode()
        return f"{self.command_id}{_PART_MARK}{self.index}/{self.count}".encode()

    @classmethod
    def parse(cls, ticket: bytes) -> PartitionTicket:
        text = decode_text(ticket, "ticket")
        command_id, mark, part = text.partition(_PART_MARK)
        if not mark:
            return cls(command_id)
        index, _, count = part.partition("/")
        if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
            raise UnknownCommandError(f"malformed partition ticket {quoted(text)}")
        return cls(command_id, int(index), int(count))


# Between a command id (a UUID: hex digits and dashes) and its part in a ticket.
_PART_MARK = "#part="
