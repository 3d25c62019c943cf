"""Parquet in object storage: what the engine fetches, and what goes wrong.

A loopback S3 server counts the bytes it serves. A retrieval or pull whose
time window covers one day of a 24-day object fetches a small part of it
(its row groups are one day each), and asking for fewer features fetches
fewer bytes. Faults reach both clients as named errors of the right Flight
class, naming the URI and never a credential, and the server serves on: a
deleted object or a bucket that is not there (not found), a column the
object lacks, an endpoint nobody listens on, the S3 server stopped, a
connection dropped mid-transfer (unavailable), credentials refused. The
local-parquet engine's raw-column bound reaches DuckDB's parquet scan.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
from feast import Entity, FeatureStore, FeatureView, Field, FileSource
from feast.credentials import ConnectionRef
from feast.types import Float32, Int64
from feast.value_type import ValueType
from object_storage_helpers import BUCKET, s3_credentials
from offline_helpers import (
    assert_same_rows,
    both_clients,
    make_client_store,
    make_repo,
    offline_store_of,
    wait_until,
)

from flightlab.engine import EngineSettings, object_store
from flightlab.engine.object_store import ROW_ID, ObjectStoreParquet
from flightlab.engine.parquet import BoundedParquetRead, ParquetSource
from flightlab.engine.reading import TimeWindow
from flightlab.engine.sql import pull_sql
from flightlab.errors import (
    MissingSourceColumnError,
    OfflineStoreCredentialsError,
    OfflineStoreUnavailableError,
    SourceObjectNotFoundError,
)
from flightlab.server import OfflineServer
from flightlab.server.limits import ServerLimits
from flightlab.testing.processes import free_port
from flightlab.testing.s3 import SECRET_KEY, S3Server

CLIENTS = ("flightlab", "stock")
START = datetime(2025, 1, 1, tzinfo=UTC)
DAYS, PER_DAY, DRIVERS = 24, 5_000, 500
DRIVER = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
FEATURES = ("conv_rate", "acc_rate", "trips")
KEY = "stats/driver_stats.parquet"


def driver_stats() -> pa.Table:
    """DAYS days of driver stats in time order, one row group a day."""
    rng = np.random.default_rng(7)
    rows = DAYS * PER_DAY
    seconds = np.sort(rng.integers(0, DAYS * 86_400, rows))
    stamps = pd.Series(START + pd.to_timedelta(seconds, unit="s")).astype("datetime64[us, UTC]")
    return pa.table(
        {
            "driver_id": pa.array(rng.integers(0, DRIVERS, rows), pa.int64()),
            "event_timestamp": pa.array(stamps),
            "created": pa.array(stamps + pd.Timedelta(minutes=5)),
            "conv_rate": pa.array(rng.random(rows), pa.float32()),
            "acc_rate": pa.array(rng.random(rows), pa.float32()),
            "trips": pa.array(rng.integers(0, 1_000, rows), pa.int64()),
        }
    )


def stats_view(name: str, path: str, **source: object) -> FeatureView:
    return FeatureView(
        name=name,
        entities=[DRIVER],
        ttl=timedelta(days=1),
        schema=[Field(name=f, dtype=Int64 if f == "trips" else Float32) for f in FEATURES],
        source=FileSource(
            name=f"{name}_source",
            path=path,
            timestamp_field="event_timestamp",
            created_timestamp_column="created",
            **source,
        ),
    )


def one_day_of_entities(day: int = 12, rows: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(day)
    at = START + timedelta(days=day) + pd.to_timedelta(rng.integers(0, 86_400, rows), unit="s")
    return pd.DataFrame(
        {
            "driver_id": rng.integers(0, DRIVERS + 20, rows),
            "event_timestamp": pd.Series(at).astype("datetime64[us, UTC]"),
        }
    )


def historical(store: FeatureStore, view: str = "stats", features=FEATURES) -> pd.DataFrame:
    refs = [f"{view}:{f}" for f in features]
    return store.get_historical_features(one_day_of_entities(), refs).to_df()


def pull_all(store: FeatureStore, source, features=FEATURES, days=None) -> pd.DataFrame:
    window = {}
    if days is not None:
        window = {"start_date": START + timedelta(days[0]), "end_date": START + timedelta(days[1])}
    return (
        offline_store_of(store)
        .pull_all_from_table_or_query(
            config=store.config,
            data_source=source,
            join_key_columns=["driver_id"],
            feature_name_columns=list(features),
            timestamp_field="event_timestamp",
            created_timestamp_column="created",
            **window,
        )
        .to_df()
    )


# --- fixtures: one object, a local repo reading its file, an S3 repo reading it -----------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("s3_faults_data") / "driver_stats.parquet"
    pq.write_table(driver_stats(), path, row_group_size=PER_DAY)
    return path


@pytest.fixture(scope="module")
def s3(tmp_path_factory, data) -> Iterator[S3Server]:
    with S3Server(log=tmp_path_factory.mktemp("s3_faults") / "moto.log") as server:
        with s3_credentials(server):
            server.create_bucket(BUCKET)
            server.upload_file(data, BUCKET, KEY)
            yield server


@pytest.fixture(scope="module")
def local(tmp_path_factory, data) -> FeatureStore:
    store = FeatureStore(repo_path=str(make_repo(tmp_path_factory.mktemp("s3_faults_local"))))
    store.apply([DRIVER, stats_view("stats", str(data))])
    return store


@pytest.fixture(scope="module")
def s3_repo(tmp_path_factory, s3, data) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("s3_faults_repo"))
    uri, endpoint = f"s3://{BUCKET}/{KEY}", {"s3_endpoint_override": s3.endpoint}
    nobody = {"s3_endpoint_override": f"http://127.0.0.1:{free_port()}"}
    s3.upload_file(data, BUCKET, "stats/deleted.parquet")
    views = [
        stats_view("stats", uri, **endpoint),
        stats_view("deleted", f"s3://{BUCKET}/stats/deleted.parquet", **endpoint),
        stats_view("no_bucket", "s3://no-such-bucket/driver_stats.parquet", **endpoint),
        stats_view("nobody_listens", uri, **nobody),
        stats_view("with_ref", uri, connection_ref=ConnectionRef("env", "AWS_"), **endpoint),
    ]
    FeatureStore(repo_path=str(repo)).apply([DRIVER, *views])
    s3.delete(BUCKET, "stats/deleted.parquet")  # registered, then gone
    return repo


@pytest.fixture(scope="module")
def server(s3_repo) -> Iterator[OfflineServer]:
    # Every call here must reach the objects: no result is kept (test_reuse
    # shows what keeping one does with S3 sources).
    with OfflineServer(s3_repo, port=0, limits=ServerLimits(reuse_bytes=0)) as server:
        yield server


@pytest.fixture(scope="module")
def remotes(server, s3_repo, tmp_path_factory) -> dict[str, FeatureStore]:
    return both_clients(tmp_path_factory.mktemp("s3_faults_clients"), server, s3_repo)


def served_bytes(s3: S3Server, call) -> tuple[object, int]:
    s3.reset_counts()
    result = call()
    return result, s3.counts().bytes_of(KEY)


# --- pushdown ------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_a_one_day_pull_fetches_a_small_part_of_the_object(client, s3, local, remotes, data):
    size = data.stat().st_size
    remote = remotes[client]
    source = remote.get_data_source("stats_source")
    got, fetched = served_bytes(s3, lambda: pull_all(remote, source, days=(12, 13)))
    assert_same_rows(pull_all(local, local.get_data_source("stats_source"), days=(12, 13)), got,
                     ["driver_id", "event_timestamp"])  # fmt: skip
    assert len(got) > 0.9 * PER_DAY
    # One row group of 24, the footer, and what pyarrow reads around them.
    assert fetched < 0.2 * size, (fetched, size)
    # The counter sees a whole read: every row group of every column.
    _, everything = served_bytes(s3, lambda: pull_all(remote, source))
    assert everything > 0.8 * size, (everything, size)
    # Fewer features, fewer bytes (projection).
    _, one_feature = served_bytes(s3, lambda: pull_all(remote, source, ["conv_rate"]))
    assert one_feature < everything - 0.15 * size, (one_feature, everything)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_retrieval_within_one_day_fetches_its_window_and_ttl_only(
    client, s3, local, remotes, data
):
    got, fetched = served_bytes(s3, lambda: historical(remotes[client]))
    assert_same_rows(historical(local), got, ["driver_id", "event_timestamp"])
    assert got["conv_rate"].notna().mean() > 0.9
    # Entity rows in one day, a TTL of one day: 2 to 3 of 24 row groups.
    assert fetched < 0.25 * data.stat().st_size, (fetched, data.stat().st_size)


def test_the_local_engine_bounds_the_raw_timestamp_in_the_parquet_scan(data):
    database = duckdb.connect()
    database.execute("SET TimeZone = 'UTC'")
    try:
        files = ParquetSource(str(data))
        window = TimeWindow(START + timedelta(days=3), START + timedelta(days=4))
        read = files.read(database, [], "event_timestamp", window)
        assert isinstance(read, BoundedParquetRead)
        assert "TIMESTAMPTZ" in read.row_filter and "CAST" not in read.row_filter
        query = pull_sql(read, ["driver_id", "event_timestamp"], "event_timestamp", None,
                         window.start, window.end, latest_by=["driver_id"])  # fmt: skip
        plan = "\n".join(row[1] for row in database.execute(f"EXPLAIN {query}").fetchall())
        assert "event_timestamp>=" in plan.replace(" ", "")  # a filter of the scan itself
        answer = database.sql(query).to_arrow_table()
        rows = pq.read_table(data).to_pandas()
        in_window = rows[rows.event_timestamp.between(window.start, window.end)]
        assert answer.num_rows == in_window.driver_id.nunique()
    finally:
        database.close()


# --- faults ----------------------------------------------------------------------------


def failure(store: FeatureStore, view: str) -> BaseException:
    with pytest.raises(Exception) as raised:
        historical(store, view)
    return raised.value


def assert_serving(server: OfflineServer, store: FeatureStore, local: FeatureStore) -> None:
    assert_same_rows(historical(local), historical(store), ["driver_id", "event_timestamp"])
    assert server.stats_json()["staged_commands"] == 0
    assert wait_until(lambda: server.dispatcher.engine.usage().open_databases == 0)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(
    "view, uri",
    [
        ("deleted", f"s3://{BUCKET}/stats/deleted.parquet"),
        ("no_bucket", "s3://no-such-bucket/driver_stats.parquet"),
    ],
)
def test_an_object_or_bucket_that_is_not_there_is_not_found_naming_it(
    view, uri, client, remotes, server, local
):
    error = failure(remotes[client], view)
    assert isinstance(error, SourceObjectNotFoundError), repr(error)
    assert isinstance(error, flight.FlightServerError)
    assert uri in str(error)
    assert_serving(server, remotes[client], local)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_column_the_object_lacks_is_named(client, remotes, server, local):
    source = remotes[client].get_data_source("stats_source")
    with pytest.raises(Exception, match="no column 'surge'") as raised:
        pull_all(remotes[client], source, ["conv_rate", "surge"])
    assert isinstance(raised.value, MissingSourceColumnError), repr(raised.value)
    assert isinstance(raised.value, flight.FlightServerError)
    assert f"s3://{BUCKET}/{KEY}" in str(raised.value)
    assert_serving(server, remotes[client], local)


@pytest.mark.parametrize("client", CLIENTS)
def test_an_endpoint_nobody_listens_on_is_unavailable(client, remotes, server, local):
    error = failure(remotes[client], "nobody_listens")
    assert isinstance(error, OfflineStoreUnavailableError), repr(error)
    assert isinstance(error, flight.FlightUnavailableError)
    assert "unreachable" in str(error) and f"s3://{BUCKET}/{KEY}" in str(error)
    assert_serving(server, remotes[client], local)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_connection_dropped_mid_transfer_is_unavailable(client, s3, remotes, server, local):
    s3.cut_reads_after(64 * 1024)
    try:
        error = failure(remotes[client], "stats")
    finally:
        s3.cut_reads_after(None)
    assert isinstance(error, OfflineStoreUnavailableError), repr(error)
    assert isinstance(error, flight.FlightUnavailableError)
    assert s3.endpoint in str(error)
    assert_serving(server, remotes[client], local)


@pytest.mark.parametrize("client", CLIENTS)
def test_refused_credentials_are_a_server_side_error_that_names_no_secret(
    client, s3, remotes, server, local
):
    s3.check_credentials()  # moto's IAM knows no key: every request is refused
    try:
        errors = [failure(remotes[client], view) for view in ("stats", "with_ref")]
    finally:
        s3.check_credentials(False)
    for error in errors:
        assert isinstance(error, OfflineStoreCredentialsError), repr(error)
        assert isinstance(error, flight.FlightInternalError)
        assert "refused the server's credentials" in str(error)
        assert SECRET_KEY not in str(error)
    assert_serving(server, remotes[client], local)


def test_the_s3_server_stopped_is_unavailable_then_served_again(s3, remotes, server, local, data):
    s3.stop()
    try:
        for client in CLIENTS:
            error = failure(remotes[client], "stats")
            assert isinstance(error, OfflineStoreUnavailableError), repr(error)
            assert isinstance(error, flight.FlightUnavailableError)
            assert s3.endpoint in str(error)
    finally:
        s3.start()  # the same port; moto starts empty
        s3.create_bucket(BUCKET)
        s3.upload_file(data, BUCKET, KEY)
    for client in CLIENTS:
        assert_serving(server, remotes[client], local)


# --- where fetched rows are held -----------------------------------------------------------


def test_rows_over_their_share_of_the_memory_limit_are_held_in_a_duckdb_table(
    s3, data, tmp_path, monkeypatch
):
    reader = ObjectStoreParquet(f"s3://{BUCKET}/{KEY}", s3.endpoint)
    columns = ["driver_id", "event_timestamp", "created", *FEATURES]
    answers = {}
    for share in (object_store.ARROW_SHARE, 0.0):  # ~5 MB against a quarter of 1 GB, or none
        monkeypatch.setattr(object_store, "ARROW_SHARE", share)
        config = {"memory_limit": "1GB", "threads": 1, "temp_directory": str(tmp_path)}
        database = duckdb.connect(config=config)
        try:
            fetched = reader.read(database, columns, "event_timestamp", TimeWindow())
            tables = database.sql("SELECT table_name FROM duckdb_tables()").fetchall()
            rows = database.sql(f"SELECT * FROM {fetched.read_sql()} ORDER BY {ROW_ID}")
            answers[share] = ([name for (name,) in tables], rows.to_arrow_table())
        finally:
            database.close()
    (arrow_tables, in_arrow), (duckdb_tables, in_duckdb) = answers.values()
    assert arrow_tables == []  # an Arrow table, registered
    assert len(duckdb_tables) == 1  # a DuckDB table
    assert in_arrow.equals(in_duckdb)
    assert in_duckdb.num_rows == DAYS * PER_DAY


def test_rows_in_a_duckdb_table_over_a_tight_memory_limit_give_the_local_answer(
    s3_repo, local, tmp_path, monkeypatch
):
    monkeypatch.setattr(object_store, "ARROW_SHARE", 0.0)  # every fetch into DuckDB's table
    tight = EngineSettings(threads=1, memory_limit="16MB", spill_dir=tmp_path / "spill")
    entities = pd.concat([one_day_of_entities(day) for day in range(1, DAYS, 3)])
    refs = [f"stats:{f}" for f in FEATURES]
    with OfflineServer(s3_repo, port=0, engine=tight) as server:
        remote = make_client_store(tmp_path / "client", server.port, s3_repo)
        got = remote.get_historical_features(entities, refs).to_df()
        assert server.stats_json()["requests_by_engine"] == {"flightlab": 1}
    expected = local.get_historical_features(entities, refs).to_df()
    assert_same_rows(expected, got, ["driver_id", "event_timestamp"])
