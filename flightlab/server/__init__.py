"""The offline feature server: answering Flight calls for a Feast repo.

Exports :class:`OfflineServer` (start, stop, context manager),
:class:`ServerTls` and :class:`ServerLimits`. Inside:

- :mod:`~flightlab.server.lifecycle`: ``OfflineServer``, which holds the parts;
- :mod:`~flightlab.server.rpcs`: the Flight RPCs, mapped to requests;
- :mod:`~flightlab.server.calls`: each call admitted, run, counted and logged once;
- :mod:`~flightlab.server.auth`, :mod:`~flightlab.server.ownership`: who is
  calling, and whose staged commands it may see;
- :mod:`~flightlab.server.staging`, :mod:`~flightlab.server.workers`,
  :mod:`~flightlab.server.streams`: staged commands, the worker pool, the
  streams handed to Flight and how they end;
- :mod:`~flightlab.server.limits`, :mod:`~flightlab.server.caps`: the
  tunables, and requests refused over a cap;
- :mod:`~flightlab.server.memory`: memory given back after large requests.

What a request then becomes is :mod:`flightlab.dispatch`'s concern; what
running as a service adds (health, metrics, drain) is
:mod:`flightlab.operations`'s. The exports load on first use, so importing a
light submodule (``limits``) does not start pyarrow.flight or Feast.
"""

from __future__ import annotations

from flightlab._lazy import lazy_exports

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "OfflineServer", "ServerLimits", "ServerTls"]

_LAZY = {
    "DEFAULT_HOST": "flightlab.server.lifecycle",
    "DEFAULT_PORT": "flightlab.server.lifecycle",
    "OfflineServer": "flightlab.server.lifecycle",
    "ServerTls": "flightlab.server.lifecycle",
    "ServerLimits": "flightlab.server.limits",
}


__getattr__ = lazy_exports(__name__, _LAZY)
