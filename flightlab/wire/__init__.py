"""The wire format that flightlab's server and client share: every byte that travels.

- :mod:`~flightlab.wire.protocol`: flightlab's own protocol (the seed
  document's): commands, tickets, metadata keys, and the frozen request
  dataclasses every call is decoded into, with their one codec;
- :mod:`~flightlab.wire.params`: how one parameter value travels;
- :mod:`~flightlab.wire.manifest`: each put names all its command's parameters;
- :mod:`~flightlab.wire.feast_protocol`: the protocol of Feast's own offline
  server and client, decoded into the same requests;
- :mod:`~flightlab.wire.headers`, :mod:`~flightlab.wire.actions`: the call
  headers and the server's own actions;
- :mod:`~flightlab.wire.flight_errors`: how an error of :mod:`flightlab.errors`
  crosses the wire (its Flight class and JSON detail);
- :mod:`~flightlab.wire.streaming`: bounded record batches and the totals that
  travel with the first one.

Nothing here knows Feast's stores or the server's state.
"""
