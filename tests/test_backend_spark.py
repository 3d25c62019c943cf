"""flightlab in front of Feast's Spark offline store (local mode, ``local[2]``).

The sample repo over parquet folders, read by SparkSource; one flightlab server
with four workers serves it for the whole module (a JVM start is slow). Every
call through flightlab's client and Feast's stock client must give what the
same call gives on the repo's own FeatureStore: retrievals (several in flight
at once, on the server's worker threads, where no Spark session is active
until the server binds one), offline writes and persist. The store has no
write_logged_features: remotely it fails with the class it fails with locally.

Java comes from ``scripts/backends.sh`` (installed where missing), pyspark
from the ``backends`` extra: nothing is skipped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from backend_helpers import (
    assert_concurrent_same,
    assert_pulls_same,
    client_stores,
    historical_in_flight,
    install_backends,
)
from feast import FeatureStore
from feast.errors import DataSourceNoNameException
from feast.feature_logging import FeatureServiceLoggingSource
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import (
    SavedDatasetSparkStorage,
)
from offline_helpers import (
    DRIVER_KEYS,
    ENTITY_KEYS,
    FEATURES,
    assert_same_rows,
    logged_rows,
    new_driver_rows,
    offline_store_of,
    pull,
)

from flightlab.server import OfflineServer
from flightlab.server.limits import ServerLimits
from flightlab.testing.backend_repos import FILE_REGISTRY_YAML, create_spark_repo
from flightlab.testing.sample_repo import entity_frame

CLIENTS = ["flightlab", "feast"]
DRIVER_FEATURES = ["driver_stats:conv_rate", "driver_stats:acc_rate"]


@pytest.fixture(scope="module")
def spark_repo(tmp_path_factory) -> Path:
    install_backends()  # Java where missing
    return create_spark_repo(tmp_path_factory.mktemp("spark").resolve() / "server")


@pytest.fixture(scope="module")
def spark_server(spark_repo) -> Iterator[OfflineServer]:
    limits = ServerLimits(workers=4)
    with OfflineServer(spark_repo, host="127.0.0.1", port=0, limits=limits) as server:
        yield server


@pytest.fixture(scope="module")
def local(spark_repo) -> FeatureStore:
    store = FeatureStore(repo_path=str(spark_repo))
    assert type(offline_store_of(store)).__name__ == "SparkOfflineStore"
    return store


@pytest.fixture(scope="module")
def remotes(spark_repo, spark_server, tmp_path_factory) -> dict[str, FeatureStore]:
    registry = FILE_REGISTRY_YAML.replace(
        "data/registry.db", str(spark_repo / "data" / "registry.db")
    )
    return client_stores(tmp_path_factory.mktemp("spark_clients"), spark_server, registry)


@contextmanager
def peak_busy_workers(server: OfflineServer) -> Iterator[list[int]]:
    """Sample the server's busy workers (its ``stats``) every few milliseconds
    while the block runs; the list holds the peak once it ends."""
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            workers = server.stats_json()["workers"]
            peak[0] = max(peak[0], workers["running"])
            done.wait(0.005)

    sampler = threading.Thread(target=sample, name="busy-workers-sampler", daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join(timeout=10)


@pytest.mark.parametrize("client", CLIENTS)
def test_several_retrievals_in_flight_on_the_workers_match_the_local_store(
    client, local, remotes, spark_server
):
    # First in the module: the server's workers have never touched Spark.
    with peak_busy_workers(spark_server) as peak:
        assert_concurrent_same(local, remotes[client], requests=3)
    # The requests overlapped on the worker threads: several workers held one
    # at once (Spark calls then take turns: see flightlab/dispatch/backends.py).
    assert peak[0] >= 2, f"at most {peak[0]} worker(s) busy at once"
    assert spark_server.stats_json()["errors_by_api"] == {}


@pytest.mark.parametrize("client", CLIENTS)
def test_pull_latest_and_pull_all_match_the_local_store(client, local, remotes):
    assert_pulls_same(local, remotes[client])


@pytest.mark.parametrize("client,hours", [("flightlab", 3), ("feast", 9)])
def test_offline_write_batch_appends_rows_the_local_store_then_reads(client, hours, local, remotes):
    rows = new_driver_rows(hours_after_end=hours, drivers=(1001, 1002))
    at = rows["event_timestamp"][0]
    window = {"start_date": at, "end_date": at + timedelta(minutes=30)}
    assert pull(local, "pull_all_from_table_or_query", **window).to_df().empty

    remotes[client].write_to_offline_store("driver_stats", rows)

    written = pull(local, "pull_all_from_table_or_query", **window).to_df()
    assert sorted(written["avg_daily_trips"]) == [4242, 4243]
    assert sorted(written["conv_rate"]) == sorted(rows["conv_rate"])
    # Both sides read the new rows in a retrieval.
    entities = pd.DataFrame(
        {
            "driver_id": pd.Series([1001, 1002], dtype="int64"),
            "event_timestamp": pd.Series([at + timedelta(minutes=5)] * 2).dt.as_unit("us"),
        }
    )
    expected = local.get_historical_features(entities, DRIVER_FEATURES).to_df()
    assert sorted(expected["conv_rate"]) == sorted(rows["conv_rate"])
    got = remotes[client].get_historical_features(entities, DRIVER_FEATURES).to_df()
    assert_same_rows(expected, got, DRIVER_KEYS)


def test_persist_writes_what_the_local_store_writes(spark_repo, local, remotes):
    entities = entity_frame(30, seed=8)
    local_path = spark_repo / "data" / "persisted_local"
    local.get_historical_features(entities, FEATURES).persist(
        SavedDatasetSparkStorage(path=str(local_path), file_format="parquet")
    )
    remote_path = spark_repo / "data" / "persisted_remote"
    job = remotes["flightlab"].get_historical_features(entities, FEATURES)
    job.persist(SavedDatasetSparkStorage(path=str(remote_path), file_format="parquet"))

    expected = pd.read_parquet(local_path)
    assert len(expected) == 30
    assert_same_rows(expected, pd.read_parquet(remote_path), ENTITY_KEYS)


def test_feasts_client_cannot_persist_to_spark_storage_before_any_call(
    spark_repo, remotes, spark_server
):
    # Feast 0.67's client sends the destination's name, made by
    # SavedDatasetSparkStorage.to_data_source(): a SparkSource without a name,
    # which Feast refuses on the client, whatever the server.
    job = remotes["feast"].get_historical_features(entity_frame(5), FEATURES)
    before = spark_server.stats_json()["requests_by_api"].get("persist", 0)
    storage = SavedDatasetSparkStorage(
        path=str(spark_repo / "data" / "persisted_rows"), file_format="parquet"
    )
    with pytest.raises(DataSourceNoNameException):
        job.persist(storage)
    assert spark_server.stats_json()["requests_by_api"].get("persist", 0) == before


@pytest.mark.parametrize("client", CLIENTS)
def test_write_logged_features_fails_remotely_as_locally(client, local, remotes):
    def write_logs(store: FeatureStore) -> None:
        service = store.get_feature_service("driver_activity")
        offline_store_of(store).write_logged_features(
            config=store.config,
            data=logged_rows(store),
            source=FeatureServiceLoggingSource(service, store.project),
            logging_config=service.logging_config,
            registry=store.registry,
        )

    with pytest.raises(NotImplementedError):
        write_logs(local)
    with pytest.raises(NotImplementedError):
        write_logs(remotes[client])
    assert len(historical_in_flight(remotes[client], 2)) == 2
