"""Who owns a staged command, with or without authentication.

A command belongs to the key of whoever staged it; for any other key it does
not exist. The key is, in order:

- the authenticated user's name, on a server with ``oidc`` or ``kubernetes``;
- else the secret the client sends in the ``x-flightlab-owner`` header
  (flightlab's client makes a random one per connection and sends it on every
  call), kept only as a hash;
- else the client's connection (gRPC's peer address, ``ipv4:host:port``): a
  client written from the seed document alone stages and runs its command on
  one connection, so it keeps working unchanged.
"""

from __future__ import annotations

import hashlib

from flightlab.wire.headers import OWNER_HEADER


def owner_key(user_name: str | None, headers: dict[str, list[str]], peer: str) -> str:
    """The key commands staged by this call belong to."""
    if user_name is not None:
        return f"user:{user_name}"
    secret = next((v for k, v in headers.items() if k.lower() == OWNER_HEADER), None)
    if secret and secret[0]:
        return "secret:" + hashlib.sha256(secret[0].encode()).hexdigest()
    return f"peer:{peer}"
