"""flightlab: a remote offline feature server for Feast, over Arrow Flight.

The heavy parts (Feast, the Flight server) are imported when first used, so
``import flightlab`` stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "OfflineServer",
    "OfflineFlightClient",
    "RemoteOfflineStore",
    "RemoteOfflineStoreConfig",
    "__version__",
]

_LAZY = {
    "OfflineServer": "flightlab.server",
    "OfflineFlightClient": "flightlab.transport",
    "RemoteOfflineStore": "flightlab.client",
    "RemoteOfflineStoreConfig": "flightlab.client",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flightlab' has no attribute {name!r}")
