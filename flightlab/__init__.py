"""flightlab: a remote offline feature server for Feast, over Arrow Flight.

The sub-packages are the layers: :mod:`flightlab.errors` (every failure by
kind, knowing nothing of Flight), :mod:`flightlab.wire` (every byte server and
client exchange, and each error's Flight class), :mod:`flightlab.server` (the
Flight calls), :mod:`flightlab.operations` (running as a service: health,
metrics, drain), :mod:`flightlab.dispatch` (a request to the engine or a Feast
call), :mod:`flightlab.engine` (retrievals in DuckDB from parquet, S3 and
PostgreSQL), :mod:`flightlab.storage` (the server's own files),
:mod:`flightlab.client` (Feast's offline-store plug-in and its transport),
:mod:`flightlab.notebook` (the notebooks' widgets and plots),
:mod:`flightlab.mnist` (the MNIST demo) and :mod:`flightlab.testing` (the
fixtures tests, benchmarks and the demo share).

Exports ``OfflineServer``, ``OfflineFlightClient``, ``RemoteOfflineStore`` and
``RemoteOfflineStoreConfig``; they load when first used, so ``import
flightlab`` stays fast.
"""

from __future__ import annotations

from flightlab._lazy import lazy_exports

__version__ = "0.1.0"

__all__ = [
    "OfflineServer",
    "OfflineFlightClient",
    "RemoteOfflineStore",
    "RemoteOfflineStoreConfig",
    "__version__",
]

_LAZY = {
    "OfflineServer": "flightlab.server.lifecycle",
    "OfflineFlightClient": "flightlab.client.transport",
    "RemoteOfflineStore": "flightlab.client.store",
    "RemoteOfflineStoreConfig": "flightlab.client.store",
}


__getattr__ = lazy_exports(__name__, _LAZY)
