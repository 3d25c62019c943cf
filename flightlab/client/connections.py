"""One connection per server and settings, shared by every call of a process.

A ``FeatureStore`` makes a new offline-store call object for each call, and
opening a Flight connection per call pays a TCP (and TLS) handshake each time.
The connections are kept here instead, keyed by everything that makes them
differ (location, TLS files, auth settings, timeout, compression,
partitions), and reused by every call and thread: a gRPC channel carries
concurrent calls, and reconnects by itself after the server restarts. They
are closed when the process exits.
"""

from __future__ import annotations

import atexit
import threading
from pathlib import Path
from typing import Any

from feast.repo_config import RepoConfig

from flightlab.client.transport import OfflineFlightClient

_lock = threading.Lock()
_clients: dict[tuple, OfflineFlightClient] = {}


def connection(config: RepoConfig) -> OfflineFlightClient:
    """The shared client for ``config``'s flightlab offline store."""
    key = _key(config)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = _new_client(config)
        return client


def close_all() -> None:
    """Close every shared connection (the next call opens a new one)."""
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()


atexit.register(close_all)


def _key(config: RepoConfig) -> tuple:
    store = config.offline_store
    return (
        store.model_dump_json(),
        config.auth_config.model_dump_json(),
        *(_file_stamp(path) for path in (store.cert, store.client_cert, store.client_key)),
    )


def _file_stamp(path: str) -> tuple[str, int] | None:
    """A TLS file by path and modification time: a renewed certificate gets a
    new connection."""
    if not path:
        return None
    try:
        return path, Path(path).stat().st_mtime_ns
    except OSError:
        return path, -1  # reading it will say what is wrong


def _new_client(config: RepoConfig) -> OfflineFlightClient:
    store_config = config.offline_store
    return OfflineFlightClient(
        store_config.location,
        timeout=store_config.timeout,
        compression=store_config.compression,
        partitions=store_config.partitions,
        **_connection_arguments(config, store_config),
    )


def _connection_arguments(config: RepoConfig, store_config: Any) -> dict:
    arguments: dict[str, Any] = {}
    if config.auth_config.type != "no_auth":
        # Feast's own interceptor: the token comes from the repo's `auth`
        # config exactly as Feast's clients get it (static token, env var,
        # client credentials...), on every call.
        from feast.permissions.client.arrow_flight_auth_interceptor import (
            FlightAuthInterceptorFactory,
        )

        arguments["middleware"] = [FlightAuthInterceptorFactory(config.auth_config)]
    if store_config.cert:
        arguments["tls_root_certs"] = Path(store_config.cert).read_bytes()
    if store_config.client_cert or store_config.client_key:
        if not (store_config.client_cert and store_config.client_key):
            raise ValueError("mTLS needs both client_cert and client_key")
        arguments["cert_chain"] = Path(store_config.client_cert).read_bytes()
        arguments["private_key"] = Path(store_config.client_key).read_bytes()
    return arguments
