"""Writes through flightlab land where a local write would, with the same content.

These tests change their repo (rows appended to a parquet source, log files,
persisted datasets, newly applied views), so the module builds its own repo
and server rather than touching the shared ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast import FeatureStore, FeatureView, Field
from feast.errors import FeatureViewNotFoundException, SavedDatasetLocationAlreadyExists
from feast.feature_logging import FeatureServiceLoggingSource
from feast.infra.offline_stores.file_source import SavedDatasetFileStorage
from feast.types import Float32
from offline_helpers import (
    DRIVER_KEYS,
    ENTITY_KEYS,
    FEATURES,
    arrow,
    assert_same_rows,
    make_client_store,
    pull,
    requests_served,
)

from flightlab.client import RemoteOfflineStore
from flightlab.client.transport import OfflineFlightClient
from flightlab.server import OfflineServer
from flightlab.testing.sample_repo import DAYS, START, create_sample_repo, entity_frame
from flightlab.wire import protocol


@pytest.fixture(scope="module")
def write_repo(tmp_path_factory) -> Path:
    return create_sample_repo(tmp_path_factory.mktemp("writes").resolve() / "server", "duckdb")


@pytest.fixture(scope="module")
def write_server(write_repo) -> Iterator[OfflineServer]:
    with OfflineServer(write_repo, port=0) as server:
        yield server


@pytest.fixture(scope="module")
def local(write_repo) -> FeatureStore:
    return FeatureStore(repo_path=str(write_repo))


@pytest.fixture(scope="module")
def remote(write_server, write_repo, tmp_path_factory) -> FeatureStore:
    client_repo = tmp_path_factory.mktemp("writes_client").resolve() / "client"
    return make_client_store(client_repo, write_server.port, write_repo)


def new_driver_rows(hours_after_end: int, drivers: tuple[int, ...]) -> pd.DataFrame:
    """Driver stats later than any in the sample data, with recognisable values."""
    at = START + timedelta(days=DAYS, hours=hours_after_end)
    n = len(drivers)
    return pd.DataFrame(
        {
            # Not in the source's column order: Feast reorders them.
            "conv_rate": pd.Series([0.125 * (i + 1) for i in range(n)], dtype="float32"),
            "driver_id": pd.Series(drivers, dtype="int64"),
            "event_timestamp": pd.Series([at] * n).dt.as_unit("us"),
            "acc_rate": pd.Series([0.5] * n, dtype="float32"),
            "avg_daily_trips": pd.Series([4242 + i for i in range(n)], dtype="int64"),
            "created": pd.Series([at + timedelta(minutes=1)] * n).dt.as_unit("us"),
        }
    )


def stats_at(store: FeatureStore, drivers: tuple[int, ...], at) -> pd.DataFrame:
    entities = pd.DataFrame({"driver_id": list(drivers), "event_timestamp": [at] * len(drivers)})
    refs = ["driver_stats:conv_rate", "driver_stats:avg_daily_trips"]
    return store.get_historical_features(entities, refs).to_df().sort_values("driver_id")


# --- offline_write_batch -----------------------------------------------------------------


def test_rows_written_through_the_client_are_read_by_the_servers_local_store(
    remote, local, write_server
):
    drivers = (1001, 1002, 1003)
    rows = new_driver_rows(hours_after_end=5, drivers=drivers)
    rows_before = len(pull(local, "pull_all_from_table_or_query").to_df())
    served_before = requests_served(write_server, "offline_write_batch")

    remote.write_to_offline_store("driver_stats", rows)

    assert requests_served(write_server, "offline_write_batch") == served_before + 1
    assert len(pull(local, "pull_all_from_table_or_query").to_df()) == rows_before + len(drivers)
    just_after = rows["event_timestamp"][0] + timedelta(minutes=30)
    seen_locally = stats_at(local, drivers, just_after)
    assert seen_locally["conv_rate"].tolist() == rows["conv_rate"].tolist()
    assert seen_locally["avg_daily_trips"].tolist() == rows["avg_daily_trips"].tolist()
    # ...and the client reads back what the server's store now holds.
    assert_same_rows(seen_locally, stats_at(remote, drivers, just_after), DRIVER_KEYS)


def test_rows_of_the_wrong_shape_are_refused_and_nothing_is_written(remote, local, write_server):
    rows = new_driver_rows(hours_after_end=9, drivers=(1004,))
    rows_before = len(pull(local, "pull_all_from_table_or_query").to_df())

    # Feast's own check, on the column names the server reported.
    with pytest.raises(ValueError, match="missing_expected_columns: \\['acc_rate'\\]"):
        remote.write_to_offline_store("driver_stats", rows.drop(columns="acc_rate"))
    # The server's check, for a client that sends columns out of order.
    with pytest.raises(ValueError, match="incorrect columns"):
        RemoteOfflineStore.offline_write_batch(
            remote.config, remote.get_feature_view("driver_stats"), arrow(rows), progress=None
        )

    assert len(pull(local, "pull_all_from_table_or_query").to_df()) == rows_before
    assert write_server.stats_json()["staged_commands"] == 0


# --- write_logged_features -----------------------------------------------------------------


def logged_rows(store: FeatureStore, n: int = 6) -> pa.Table:
    """Rows shaped as the feature service's logging schema, with distinct values."""
    service = store.get_feature_service("driver_activity")
    schema = FeatureServiceLoggingSource(service, store.project).get_schema(store.registry)
    columns = {}
    for field in schema:
        kind = field.type
        if pa.types.is_timestamp(kind):
            values = [START + timedelta(hours=i) for i in range(n)]
        elif pa.types.is_date(kind):
            values = [(START + timedelta(days=i)).date() for i in range(n)]
        elif pa.types.is_string(kind):
            values = [f"request-{i}" for i in range(n)]
        elif pa.types.is_floating(kind):
            values = list(np.linspace(0.0, 1.0, n))
        else:
            values = list(range(n))
        columns[field.name] = pa.array(values, kind)
    return pa.table(columns, schema=schema)


def log_files(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


def read_logs(files: set[Path]) -> pa.Table:
    table = pa.concat_tables(pq.read_table(path) for path in sorted(files))
    return table.sort_by("__request_id")


@pytest.mark.parametrize("given_as", ["table", "parquet_path"])
def test_logged_features_land_in_the_logging_destination_as_a_local_write(
    given_as, remote, local, write_repo, write_server, tmp_path
):
    destination = write_repo / "data" / "logs"
    logs = logged_rows(local)
    data: pa.Table | Path = logs
    if given_as == "parquet_path":
        data = tmp_path / "logs"
        data.mkdir()
        pq.write_table(logs, data / "part-0.parquet")
    served_before = requests_served(write_server, "write_logged_features")

    before = log_files(destination)
    remote.write_logged_features(data, remote.get_feature_service("driver_activity"))
    written_remotely = log_files(destination) - before
    assert written_remotely, "no log file appeared in the logging destination"
    assert requests_served(write_server, "write_logged_features") == served_before + 1

    before = log_files(destination)
    local.write_logged_features(logs, local.get_feature_service("driver_activity"))
    written_locally = log_files(destination) - before

    remote_logs, local_logs = read_logs(written_remotely), read_logs(written_locally)
    assert remote_logs.num_rows == logs.num_rows
    assert remote_logs.equals(local_logs)


# --- persist ---------------------------------------------------------------------------------


def test_persist_writes_the_file_a_local_persist_writes(remote, local, write_server, tmp_path):
    entities = entity_frame(40, seed=41)
    remote_file, local_file = tmp_path / "remote.parquet", tmp_path / "local.parquet"
    served_before = requests_served(write_server, "persist")

    remote_job = remote.get_historical_features(entities, FEATURES)
    remote_job.persist(SavedDatasetFileStorage(path=str(remote_file)))
    local.get_historical_features(entities, FEATURES).persist(
        SavedDatasetFileStorage(path=str(local_file))
    )

    assert requests_served(write_server, "persist") == served_before + 1
    persisted = pd.read_parquet(remote_file)
    assert len(persisted) == len(entities)
    assert_same_rows(pd.read_parquet(local_file), persisted, ENTITY_KEYS)

    # An existing file is kept unless overwriting is asked for.
    modified = remote_file.stat().st_mtime_ns
    with pytest.raises(SavedDatasetLocationAlreadyExists, match="remote.parquet"):
        remote_job.persist(SavedDatasetFileStorage(path=str(remote_file)))
    assert remote_file.stat().st_mtime_ns == modified
    assert write_server.stats_json()["staged_commands"] == 0

    fewer = entity_frame(7, seed=42)
    remote.get_historical_features(fewer, FEATURES).persist(
        SavedDatasetFileStorage(path=str(remote_file)), allow_overwrite=True
    )
    local.get_historical_features(fewer, FEATURES).persist(
        SavedDatasetFileStorage(path=str(local_file)), allow_overwrite=True
    )
    assert len(pd.read_parquet(remote_file)) == len(fewer)
    assert_same_rows(pd.read_parquet(local_file), pd.read_parquet(remote_file), ENTITY_KEYS)


def test_a_saved_dataset_made_through_the_client_is_registered_and_reads_back(
    remote, local, tmp_path
):
    # Feast's persist leaves out on-demand columns (locally too), and reading
    # the dataset back then fails: a saved dataset holds stored features only.
    features = [ref for ref in FEATURES if not ref.startswith("conv_rate_plus_val:")]
    entities = entity_frame(30, seed=43, with_request_data=False)
    storage = SavedDatasetFileStorage(path=str(tmp_path / "training_set.parquet"))

    remote.create_saved_dataset(
        from_=remote.get_historical_features(entities, features),
        name="remote_training_set",
        storage=storage,
    )

    registered = local.get_saved_dataset("remote_training_set")
    assert sorted(registered.features) == sorted(features)
    expected = local.get_historical_features(entities, features).to_df()
    assert_same_rows(expected, registered.to_df(), ENTITY_KEYS)
    # Read back through the server too: a pull of the dataset's own storage.
    assert_same_rows(expected, remote.get_saved_dataset("remote_training_set").to_df(), ENTITY_KEYS)


# --- the registry as it is now --------------------------------------------------------------


def test_objects_applied_after_the_server_started_are_found(remote, local, write_server):
    request = protocol.GetHistoricalFeatures(
        features=("driver_stats_late:conv_rate",),
        entity_df=arrow(entity_frame(20, seed=44, with_request_data=False)),
    )
    with OfflineFlightClient(write_server.location, timeout=60) as client:
        with pytest.raises(FeatureViewNotFoundException, match="driver_stats_late"):
            client.fetch(request)

        late_view = FeatureView(
            name="driver_stats_late",
            entities=[local.get_entity("driver")],
            ttl=timedelta(hours=6),
            schema=[Field(name="conv_rate", dtype=Float32)],
            source=local.get_data_source("driver_stats_source"),
        )
        local.apply([late_view])  # the server keeps running, unrestarted

        got = client.fetch(request).to_pandas()

    entities = entity_frame(20, seed=44, with_request_data=False)
    refs = ["driver_stats_late:conv_rate"]
    expected = local.get_historical_features(entities, refs).to_df()
    assert expected["conv_rate"].notna().any()
    assert_same_rows(expected, got, ENTITY_KEYS)
    assert_same_rows(expected, remote.get_historical_features(entities, refs).to_df(), ENTITY_KEYS)
