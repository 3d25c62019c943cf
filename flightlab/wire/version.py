"""The flightlab protocol's version, and the checks both sides make of it.

Version 1 is the protocol before versions were exchanged; version 2 adds
partitioned results (``x-flightlab-partitions``) and the exchange itself;
version 3, sharded row selections (``RowSelection.shards``: a result served
as one endpoint per worker).
A change a client or server of the previous version cannot follow raises
the version and, if older clients can no longer be served, the oldest one
the server accepts.

- Every call of flightlab's client carries ``x-flightlab-protocol``; the
  server refuses a client older than ``MIN_CLIENT_PROTOCOL`` (a call without
  the header is from version 1), saying to upgrade the client.
- On its first call, flightlab's client asks the ``protocol_version`` action;
  a server older than the client needs is refused on the client's side,
  saying to upgrade the server. A server from before the action answers it
  as an unknown API: version 1.
"""

from __future__ import annotations

from typing import Any

from flightlab.wire.flight_errors import ProtocolVersionError

PROTOCOL_VERSION = 3
# The first version serving sharded row selections.
SHARDS_PROTOCOL = 3
# The oldest client a server of this version serves.
MIN_CLIENT_PROTOCOL = 1
# The oldest server a client of this version works with.
MIN_SERVER_PROTOCOL = 1
# What a server from before the exchange speaks.
UNVERSIONED = 1


def server_versions() -> dict[str, int]:
    """What the ``protocol_version`` action answers."""
    return {"protocol": PROTOCOL_VERSION, "min_client_protocol": MIN_CLIENT_PROTOCOL}


def check_client(header: str | None, min_client: int = MIN_CLIENT_PROTOCOL) -> None:
    """On the server: refuse a client older than ``min_client``."""
    client = UNVERSIONED if header is None else _version(header)
    if client < min_client:
        raise ProtocolVersionError(
            f"this flightlab client speaks protocol {client}, and the server needs at least "
            f"{min_client}: upgrade flightlab on the client"
        )


def check_server(
    answer: dict[str, Any],
    client: int = PROTOCOL_VERSION,
    min_server: int = MIN_SERVER_PROTOCOL,
) -> int:
    """On the client: the server's version, once sure the two work together."""
    server = int(answer.get("protocol", UNVERSIONED))
    if server < min_server:
        raise ProtocolVersionError(
            f"the flightlab server speaks protocol {server}, and this client needs at least "
            f"{min_server}: upgrade flightlab on the server"
        )
    min_client = int(answer.get("min_client_protocol", UNVERSIONED))
    if client < min_client:
        raise ProtocolVersionError(
            f"this flightlab client speaks protocol {client}, and the server needs at least "
            f"{min_client}: upgrade flightlab on the client"
        )
    return server


def require_server(server: int, needed: int, what: str) -> None:
    """On the client: refuse to ask ``what`` of a server older than ``needed``."""
    if server < needed:
        raise ProtocolVersionError(
            f"{what} needs a flightlab server of protocol {needed} or later, and this one "
            f"speaks {server}: upgrade flightlab on the server"
        )


def _version(text: str) -> int:
    if not text.isdigit():
        raise ProtocolVersionError(f"the protocol version header says {text!r}, not a number")
    return int(text)
