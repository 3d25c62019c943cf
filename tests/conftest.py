"""Shared fixtures: one real Feast repo, served by one real flightlab server.

``server_repo`` is the sample repo (parquet file sources, two entities, two
feature views, an on-demand feature view, a feature service with a logging
config) built with the real ``feast apply``, on Feast's duckdb offline store.
``offline_server`` serves it on a free loopback port; ``client_store`` is a
client repo whose offline store is ``flightlab.client.RemoteOfflineStore``
pointed at that server, reading the server repo's registry; ``local_store``
is the server repo's own FeatureStore, which gives the answer every remote
call is compared with.

These are read by many tests: nothing here may be written to. Tests that
write (offline_write_batch, logs, persist, apply) build their own repo.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow.flight as flight
import pytest
from feast import FeatureStore
from offline_helpers import SHARED_SERVER_BATCH_ROWS, make_client_store

from flightlab.client.transport import OfflineFlightClient
from flightlab.server import OfflineServer
from flightlab.server.limits import ServerLimits
from flightlab.testing.sample_repo import create_sample_repo


@pytest.fixture(scope="session")
def server_repo(tmp_path_factory) -> Path:
    return create_sample_repo(tmp_path_factory.mktemp("core").resolve() / "server", "duckdb")


@pytest.fixture(scope="session")
def offline_server(server_repo) -> Iterator[OfflineServer]:
    limits = ServerLimits(batch_rows=SHARED_SERVER_BATCH_ROWS)
    with OfflineServer(server_repo, host="127.0.0.1", port=0, limits=limits) as server:
        yield server


@pytest.fixture(scope="session")
def local_store(server_repo) -> FeatureStore:
    return FeatureStore(repo_path=str(server_repo))


@pytest.fixture(scope="session")
def client_store(offline_server, server_repo, tmp_path_factory) -> FeatureStore:
    client_repo = tmp_path_factory.mktemp("core_client").resolve() / "client"
    return make_client_store(client_repo, offline_server.port, server_repo)


@pytest.fixture
def flight_client(offline_server) -> Iterator[OfflineFlightClient]:
    """flightlab's own transport client, as RemoteOfflineStore uses it."""
    with OfflineFlightClient(offline_server.location, timeout=60) as client:
        yield client


@pytest.fixture
def raw_flight(offline_server) -> Iterator[flight.FlightClient]:
    """A bare pyarrow.flight client: what a client written from the protocol sees."""
    client = flight.FlightClient(offline_server.location)
    yield client
    client.close()
