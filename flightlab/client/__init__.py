"""The client side: Feast's offline-store plug-in and its Flight transport.

- :mod:`~flightlab.client.store`: ``RemoteOfflineStore`` and
  ``RemoteOfflineStoreConfig`` (Feast's plug-in pair, so a client repo's
  ``feature_store.yaml`` selects them with
  ``type: flightlab.client.RemoteOfflineStore``) and ``RemoteRetrievalJob``;
- :mod:`~flightlab.client.transport`: ``OfflineFlightClient``, the client half
  of flightlab's protocol, with streaming and ``Progress``.

The exports load on first use: the transport alone does not import Feast.
"""

from __future__ import annotations

from flightlab._lazy import lazy_exports

__all__ = [
    "OfflineFlightClient",
    "Progress",
    "RemoteOfflineStore",
    "RemoteOfflineStoreConfig",
    "RemoteRetrievalJob",
]

_LAZY = {
    "OfflineFlightClient": "flightlab.client.transport",
    "Progress": "flightlab.client.transport",
    "RemoteOfflineStore": "flightlab.client.store",
    "RemoteOfflineStoreConfig": "flightlab.client.store",
    "RemoteRetrievalJob": "flightlab.client.store",
}


__getattr__ = lazy_exports(__name__, _LAZY)
