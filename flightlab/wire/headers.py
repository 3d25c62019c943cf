"""The call headers flightlab's client and server exchange, besides Flight's own.

gRPC sends header names in lower case; the server compares them so.
"""

from __future__ import annotations

# Who owns the commands this call stages (see flightlab.server.ownership): a
# secret flightlab's client makes per connection and sends on every call.
OWNER_HEADER = "x-flightlab-owner"
# A client's request for compressed results, and the codecs it may name.
COMPRESSION_HEADER = "x-flightlab-compression"
COMPRESSIONS = ("zstd", "lz4")
# The caller's credentials: "Bearer <token>", as Feast's clients send them.
AUTHORIZATION_HEADER = "authorization"
BEARER_PREFIX = "bearer "
# How many partitions flightlab's client reads a large result in, at most
# (see flightlab.server.partitions); without it a result is one stream.
PARTITIONS_HEADER = "x-flightlab-partitions"
# The protocol version flightlab's client speaks (see flightlab.wire.version);
# a call without it comes from a client older than the exchange: version 1.
PROTOCOL_HEADER = "x-flightlab-protocol"
