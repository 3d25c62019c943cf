"""The offline feature server: a Feast repo's offline store over Arrow Flight.

Exports :class:`OfflineServer` (start, stop, context manager),
:class:`ServerTls` and :class:`ServerLimits`. Inside:

- :mod:`~flightlab.server.lifecycle`: ``OfflineServer`` and how each call is
  run, counted and logged;
- :mod:`~flightlab.server.service`: the Flight RPCs, mapped to requests;
- :mod:`~flightlab.server.dispatcher`: a request becomes a Feast call;
- :mod:`~flightlab.server.staging`, :mod:`~flightlab.server.workers`,
  :mod:`~flightlab.server.limits`, :mod:`~flightlab.server.stats`: staged
  commands, the worker pool, the tunables, the counters;
- :mod:`~flightlab.server.auth`: authentication of every call.

The exports load on first use, so importing a light submodule (``limits``)
does not start pyarrow.flight or Feast.
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
