"""The wire format that flightlab's server and client share.

- :mod:`~flightlab.wire.protocol`: flightlab's own protocol (the seed
  document's): commands, tickets, metadata keys, parameter encoding, and the
  frozen request dataclasses every call is decoded into.
- :mod:`~flightlab.wire.feast_protocol`: the protocol of Feast's own offline
  server and client, decoded into the same requests.
- :mod:`~flightlab.wire.errors`: flightlab's error classes and how an error
  crosses the wire (its Flight status and JSON detail).
- :mod:`~flightlab.wire.streaming`: bounded record batches and the totals that
  travel with the first one.

Nothing here knows Feast's stores or the server's state.
"""
