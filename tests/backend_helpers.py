"""What the backend tests (PostgreSQL, Spark) share: the machine's backends,
client repos of both kinds, and the remote == local checks every backend must pass."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pandas as pd
from feast import FeatureStore
from offline_helpers import (
    DRIVER_KEYS,
    ENTITY_KEYS,
    FEATURES,
    assert_same_rows,
    offline_store_of,
    pull,
)
from paths import SCRIPTS

from flightlab.server import OfflineServer
from flightlab.testing.backend_repos import client_yaml
from flightlab.testing.sample_repo import DAYS, START, entity_frame

# flightlab's client plug-in, and Feast's stock remote client.
CLIENT_TYPES = {"flightlab": "flightlab.client.RemoteOfflineStore", "feast": "remote"}


def install_backends() -> None:
    """PostgreSQL and Java where missing (``scripts/backends.sh``), loudly
    failing when they cannot be installed: a backend test never skips."""
    subprocess.run(["bash", str(SCRIPTS / "backends.sh")], check=True, stdin=subprocess.DEVNULL)


def client_stores(
    folder: Path, server: OfflineServer, registry_yaml: str
) -> dict[str, FeatureStore]:
    """One client repo per client kind, on the server's registry."""
    stores = {}
    for kind, offline_type in CLIENT_TYPES.items():
        repo = folder / kind
        (repo / "data").mkdir(parents=True, exist_ok=True)
        yaml = client_yaml(registry_yaml, server.port, offline_type)
        (repo / "feature_store.yaml").write_text(yaml)
        stores[kind] = FeatureStore(repo_path=str(repo))
        assert type(offline_store_of(stores[kind])).__name__ == "RemoteOfflineStore"
    return stores


def assert_historical_same(local: FeatureStore, remote: FeatureStore, seed: int = 3) -> None:
    entities = entity_frame(40, seed=seed)
    assert_same_rows(
        local.get_historical_features(entities, FEATURES).to_df(),
        remote.get_historical_features(entities, FEATURES).to_df(),
        ENTITY_KEYS,
    )


def assert_pulls_same(local: FeatureStore, remote: FeatureStore) -> None:
    window = {"start_date": START + timedelta(days=1), "end_date": START + timedelta(days=DAYS)}
    for api in ("pull_latest_from_table_or_query", "pull_all_from_table_or_query"):
        expected = pull(local, api, **window).to_df()
        assert len(expected) > 0
        assert_same_rows(expected, pull(remote, api, **window).to_df(), DRIVER_KEYS)


def historical_in_flight(remote: FeatureStore, requests: int) -> list[pd.DataFrame]:
    """``requests`` retrievals sent at once from as many threads."""

    def retrieve(seed: int) -> pd.DataFrame:
        return remote.get_historical_features(entity_frame(30, seed=seed), FEATURES).to_df()

    with ThreadPoolExecutor(requests) as pool:
        jobs = [pool.submit(retrieve, seed) for seed in range(requests)]
        return [job.result() for job in jobs]


def assert_concurrent_same(local: FeatureStore, remote: FeatureStore, requests: int = 4) -> None:
    for seed, got in enumerate(historical_in_flight(remote, requests)):
        expected = local.get_historical_features(entity_frame(30, seed=seed), FEATURES).to_df()
        assert_same_rows(expected, got, ENTITY_KEYS)
