"""Feast's stock ``type: remote`` client, unmodified, against a flightlab server.

A data scientist points a client repo's ``feature_store.yaml`` at a flightlab
server (``offline_store: {type: remote, host, port}``) and uses the Feast that
is installed (0.67): no flightlab code runs on the client. Every answer is
compared with the same call on the server repo's own, local ``FeatureStore``.

Three servers on real repos built with ``feast apply``:

- the *read* server (duckdb store): every read, the error cases, and a second
  client repo that runs the real ``feast apply`` CLI through the server;
- a *file-store* server on the same registry and data (Feast's file/dask
  store): historical retrieval by start/end date, which duckdb cannot do;
- the *write* server (duckdb store, its own repo): offline_write_batch,
  write_logged_features and persist, so that writes disturb no read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast import FeatureStore
from feast.errors import (
    DataSourceObjectNotFoundException,
    FeatureViewNotFoundException,
    SavedDatasetLocationAlreadyExists,
)
from feast.feature_logging import FeatureServiceLoggingSource
from feast.infra.offline_stores.file_source import SavedDatasetFileStorage
from feast.infra.offline_stores.offline_store import RetrievalJob
from feast.infra.offline_stores.remote import (
    RemoteOfflineStore,
    RemoteRetrievalJob,
    _call_exchange,
    _call_get,
    _call_put,
    _create_empty_table,
    build_arrow_flight_client,
)
from offline_helpers import (
    assert_same_rows,
    file_store_view_repo,
    logged_rows,
    new_driver_rows,
    registry_of,
    stock_client,
    stock_client_yaml,
)

from flightlab.errors import MalformedParameterError, UnknownApiError, UnsupportedQueryError
from flightlab.server import OfflineServer
from flightlab.testing.processes import feast_apply, run_feast
from flightlab.testing.sample_repo import (
    DAYS,
    DRIVER_IDS,
    START,
    create_sample_repo,
    entity_frame,
)
from flightlab.wire.feast_protocol import is_placeholder_table

PROJECT = "flightlab_sample"
FEATURES = [
    "driver_stats:conv_rate",
    "driver_stats:avg_daily_trips",
    "customer_stats:avg_rating",
    "conv_rate_plus_val:conv_rate_plus_val",
]
DRIVER_FEATURES = ["driver_stats:conv_rate", "driver_stats:acc_rate"]
ENTITY_KEYS = ["driver_id", "customer_id", "event_timestamp"]
DRIVER_KEYS = ["driver_id", "event_timestamp"]
# The two ways Feast's client reads: do_exchange (0.67), and do_put then
# get_flight_info + do_get (every release before 0.67).
READ_PATHS = ["exchange", "put_get"]
PULL_COLUMNS = {
    "join_key_columns": ["driver_id"],
    "feature_name_columns": ["conv_rate", "acc_rate", "avg_daily_trips"],
    "timestamp_field": "event_timestamp",
    "created_timestamp_column": "created",
}

PERSISTED_FILE = "persisted_training_set.parquet"
# Feast's stock client names a persist destination only by its data source
# name (storage.to_data_source().name, which for a file is its path): the
# destination must be a data source the server knows by that name.
PERSIST_DESTINATION = f'''

persisted_training_set = FileSource(
    name=str(DATA / "{PERSISTED_FILE}"),
    path=str(DATA / "{PERSISTED_FILE}"),
    timestamp_field="event_timestamp",
)
'''


# --- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def read_repo(tmp_path_factory) -> Path:
    return create_sample_repo(tmp_path_factory.mktemp("feast_compat_read").resolve() / "server")


@pytest.fixture(scope="module")
def read_server(read_repo) -> Iterator[OfflineServer]:
    with OfflineServer(read_repo, port=0) as server:
        yield server


@pytest.fixture(scope="module")
def local(read_repo) -> FeatureStore:
    return FeatureStore(repo_path=str(read_repo))


@pytest.fixture(scope="module")
def remote(read_server, read_repo, tmp_path_factory) -> FeatureStore:
    client_repo = tmp_path_factory.mktemp("feast_compat_client")
    return stock_client(client_repo, read_server, registry_of(read_repo))


@pytest.fixture(scope="module")
def file_store_repo(read_repo, tmp_path_factory) -> Path:
    """The read repo's registry and data, served by Feast's file (dask) store."""
    return file_store_view_repo(
        tmp_path_factory.mktemp("feast_compat_file_store").resolve(), registry_of(read_repo)
    )


@pytest.fixture(scope="module")
def file_store_server(file_store_repo) -> Iterator[OfflineServer]:
    with OfflineServer(file_store_repo, port=0) as server:
        yield server


@pytest.fixture(scope="module")
def write_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("feast_compat_write").resolve() / "server"
    create_sample_repo(repo, apply=False)
    with (repo / "definitions.py").open("a") as definitions:
        definitions.write(PERSIST_DESTINATION)
    feast_apply(repo)
    return repo


@pytest.fixture(scope="module")
def write_server(write_repo) -> Iterator[OfflineServer]:
    with OfflineServer(write_repo, port=0) as server:
        yield server


@pytest.fixture(scope="module")
def write_local(write_repo) -> FeatureStore:
    return FeatureStore(repo_path=str(write_repo))


@pytest.fixture(scope="module")
def write_remote(write_server, write_repo, tmp_path_factory) -> FeatureStore:
    client_repo = tmp_path_factory.mktemp("feast_compat_write_client")
    return stock_client(client_repo, write_server, registry_of(write_repo))


@pytest.fixture(scope="module")
def applied_client(read_repo, read_server, tmp_path_factory) -> dict[str, Any]:
    """A client repo with its own registry, applied with the real ``feast apply``.

    Its definitions are the server repo's, with the data directory pointing
    where the server reads the files: apply asks the server to validate each
    batch source and to infer entity columns from it.
    """
    repo = tmp_path_factory.mktemp("feast_compat_apply").resolve() / "client"
    (repo / "data").mkdir(parents=True)
    definitions = (read_repo / "definitions.py").read_text()
    local_data = 'DATA = Path(__file__).parent / "data"'
    assert local_data in definitions
    server_data = f"DATA = Path({str(read_repo / 'data')!r})"
    (repo / "definitions.py").write_text(definitions.replace(local_data, server_data))
    (repo / "feature_store.yaml").write_text(
        stock_client_yaml(read_server.port, "data/registry.db")
    )
    before = read_server.stats_json()
    run = run_feast(repo, "apply", timeout=180)
    after = read_server.stats_json()
    return {"repo": repo, "run": run, "before": before, "after": after}


# --- helpers -------------------------------------------------------------------


def fetch(job: RetrievalJob, read_path: str, server: OfflineServer) -> pd.DataFrame:
    """Run a stock client's retrieval job over one of Feast's two read paths."""
    assert isinstance(job, RemoteRetrievalJob)
    if read_path == "exchange":
        return job.to_df()
    # What _send_retrieve_remote did before feast 0.67: stage, then fetch.
    descriptor = _call_put(job.api, job.api_parameters, job.client, job.entity_df, job.table)
    assert server.stats_json()["staged_commands"] == 1
    table = _call_get(job.client, descriptor)
    assert server.stats_json()["staged_commands"] == 0
    return table.to_pandas()


def outcome(call: Callable[[], pd.DataFrame]) -> tuple[pd.DataFrame | None, Exception | None]:
    try:
        return call(), None
    except Exception as exc:  # the test compares what local and remote raise
        return None, exc


def assert_still_serving(server: OfflineServer, client: FeatureStore, local: FeatureStore) -> None:
    """Nothing left staged, and a good request still gets the local answer."""
    assert server.stats_json()["staged_commands"] == 0
    entities = entity_frame(8, seed=21, with_request_data=False)
    refs = ["driver_stats:conv_rate", "customer_stats:avg_rating"]
    assert_same_rows(
        local.get_historical_features(entities, refs).to_df(),
        client.get_historical_features(entities, refs).to_df(),
        ENTITY_KEYS,
    )


def flight_client(server: OfflineServer, client: FeatureStore):
    """The Flight client Feast's remote store builds for each call."""
    return build_arrow_flight_client("http", "127.0.0.1", server.port, client.config.auth_config)


def offline_store(store: FeatureStore):
    """The offline store a FeatureStore's provider uses (remote or local)."""
    return store._get_provider().offline_store


def pull(store: FeatureStore, api: str, **window):
    source = store.get_data_source("driver_stats_source")
    method = getattr(offline_store(store), api)
    return method(config=store.config, data_source=source, **PULL_COLUMNS, **window)


# --- reads -----------------------------------------------------------------------


def test_feasts_placeholder_upload_is_not_taken_for_entity_rows():
    # A call without a table (date range, SQL entities, pulls, persist of
    # those) uploads this: a 'key' column split into eight one-letter rows.
    placeholder = _create_empty_table()
    assert placeholder.num_rows == 8
    assert is_placeholder_table(placeholder)
    assert not is_placeholder_table(pa.Table.from_pandas(entity_frame(3)))
    assert not is_placeholder_table(pa.table({"key": ["a", "b"]}))


@pytest.mark.parametrize("full_feature_names", [False, True])
@pytest.mark.parametrize("read_path", READ_PATHS)
def test_historical_features_for_an_entity_frame_match_the_local_store(
    read_path, full_feature_names, local, remote, read_server
):
    entities = entity_frame(60)
    job = remote.get_historical_features(entities, FEATURES, full_feature_names=full_feature_names)
    got = fetch(job, read_path, read_server)
    expected = local.get_historical_features(
        entities, FEATURES, full_feature_names=full_feature_names
    ).to_df()
    on_demand = (
        "conv_rate_plus_val__conv_rate_plus_val" if full_feature_names else "conv_rate_plus_val"
    )
    assert got[on_demand].notna().all()  # the server ran the on-demand view
    assert_same_rows(expected, got, ENTITY_KEYS)


def test_historical_features_of_a_feature_service_match_the_local_store(local, remote):
    entities = entity_frame(30, seed=4, with_request_data=False)
    got = remote.get_historical_features(entities, remote.get_feature_service("driver_activity"))
    expected = local.get_historical_features(entities, local.get_feature_service("driver_activity"))
    assert_same_rows(expected.to_df(), got.to_df(), ENTITY_KEYS)


def test_sql_entity_string_gets_what_the_local_store_gives(local, remote, read_server):
    # Feast 0.67's duckdb store takes no SQL entity string (it fails with an
    # internal AttributeError: 'str' object has no attribute 'columns'): the
    # remote call then fails with a named error saying so; if a store accepts
    # it, the answers must match.
    sql = (
        "SELECT 1001 AS driver_id, 2001 AS customer_id, "
        "TIMESTAMP '2026-01-02 12:00:00+00' AS event_timestamp"
    )
    refs = ["driver_stats:conv_rate", "customer_stats:avg_rating"]
    expected, local_error = outcome(lambda: local.get_historical_features(sql, refs).to_df())
    got, remote_error = outcome(lambda: remote.get_historical_features(sql, refs).to_df())
    if local_error is None:
        assert remote_error is None, remote_error
        assert_same_rows(expected, got, ENTITY_KEYS)
    else:
        assert remote_error is not None, "the remote call succeeded where the local one failed"
        assert isinstance(remote_error, UnsupportedQueryError), repr(remote_error)
        assert "entity_df_sql is not supported" in str(remote_error)
    assert_still_serving(read_server, remote, local)


def test_historical_features_by_date_range_match_the_local_store(
    read_repo, file_store_repo, file_store_server
):
    local_file_store = FeatureStore(repo_path=str(file_store_repo))
    client = stock_client(file_store_repo / "client", file_store_server, registry_of(read_repo))
    window = {
        "start_date": START + timedelta(days=1, hours=6),
        "end_date": START + timedelta(days=2),
    }
    expected = local_file_store.get_historical_features(features=DRIVER_FEATURES, **window).to_df()
    got = client.get_historical_features(features=DRIVER_FEATURES, **window).to_df()
    assert sorted(expected["driver_id"]) == list(DRIVER_IDS)
    assert_same_rows(expected, got, DRIVER_KEYS)


def test_date_range_on_duckdb_gets_the_file_stores_answer(
    local, remote, read_server, file_store_repo
):
    # duckdb's get_historical_features takes no start_date (TypeError locally);
    # the server's engine answers as Feast's file (dask) store does.
    window = {"start_date": START + timedelta(days=1), "end_date": START + timedelta(days=2)}
    _, local_error = outcome(
        lambda: local.get_historical_features(features=DRIVER_FEATURES, **window).to_df()
    )
    assert isinstance(local_error, TypeError)
    local_file_store = FeatureStore(repo_path=str(file_store_repo))
    expected = local_file_store.get_historical_features(features=DRIVER_FEATURES, **window).to_df()
    got = remote.get_historical_features(features=DRIVER_FEATURES, **window).to_df()
    assert_same_rows(expected, got, DRIVER_KEYS)
    assert_still_serving(read_server, remote, local)


@pytest.mark.parametrize("read_path", READ_PATHS)
def test_pull_latest_matches_the_local_store(read_path, local, remote, read_server):
    window = {"start_date": START + timedelta(hours=12), "end_date": START + timedelta(days=3)}
    api = "pull_latest_from_table_or_query"
    expected = pull(local, api, **window).to_df()
    got = fetch(pull(remote, api, **window), read_path, read_server)
    assert sorted(expected["driver_id"]) == list(DRIVER_IDS)
    assert_same_rows(expected, got, DRIVER_KEYS)


@pytest.mark.parametrize("windowed", [True, False], ids=["window", "everything"])
@pytest.mark.parametrize("read_path", READ_PATHS)
def test_pull_all_matches_the_local_store(read_path, windowed, local, remote, read_server):
    window = (
        {"start_date": START + timedelta(days=1), "end_date": START + timedelta(days=2)}
        if windowed
        else {}
    )
    api = "pull_all_from_table_or_query"
    expected = pull(local, api, **window).to_df()
    got = fetch(pull(remote, api, **window), read_path, read_server)
    hours = 24 if windowed else DAYS * 24
    assert len(expected) in (len(DRIVER_IDS) * hours, len(DRIVER_IDS) * (hours + 1))
    assert_same_rows(expected, got, DRIVER_KEYS)


@pytest.mark.parametrize("source_name", ["driver_stats_source", "customer_stats_source"])
def test_column_names_and_types_match_the_local_store(source_name, local, remote):
    def columns(store: FeatureStore) -> list[tuple[str, str]]:
        provider = store._get_provider()
        source = store.get_data_source(source_name)
        pairs = provider.get_table_column_names_and_types_from_data_source(store.config, source)
        return [(name, str(kind)) for name, kind in pairs]

    expected = columns(local)
    assert ("event_timestamp", "timestamp[ns, tz=UTC]") in expected
    assert columns(remote) == expected


def test_validate_data_source_runs_on_the_server(local, remote, read_server):
    before = read_server.stats_json()["requests_by_api"].get("validate_data_source", 0)
    source = remote.get_data_source("driver_stats_source")
    remote._get_provider().validate_data_source(remote.config, source)
    after = read_server.stats_json()
    assert after["requests_by_api"]["validate_data_source"] == before + 1
    assert "validate_data_source" not in after["errors_by_api"]


# --- feast apply in a client repo ------------------------------------------------


def test_feast_apply_in_a_remote_client_repo_validates_through_the_server(applied_client):
    run = applied_client["run"]
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Created feature view driver_stats" in run.stdout
    before, after = applied_client["before"], applied_client["after"]

    def served(api: str, key: str = "requests_by_api") -> int:
        return after[key].get(api, 0) - before[key].get(api, 0)

    # One validation per feature view's batch source; entity columns inferred
    # from the sources' column names, all answered by the server.
    assert served("validate_data_source") == 2
    assert served("get_table_column_names_and_types_from_data_source") >= 1
    assert sum(after["errors_by_api"].values()) == sum(before["errors_by_api"].values())

    store = FeatureStore(repo_path=str(applied_client["repo"]))
    assert sorted(v.name for v in store.list_feature_views()) == ["customer_stats", "driver_stats"]
    assert [v.name for v in store.list_on_demand_feature_views()] == ["conv_rate_plus_val"]
    assert [s.name for s in store.list_feature_services()] == ["driver_activity"]
    assert sorted(e.name for e in store.list_entities()) == ["customer", "driver"]


def test_the_applied_client_repo_reads_what_the_server_repo_reads(applied_client, local):
    assert applied_client["run"].returncode == 0, applied_client["run"].stderr[-3000:]
    store = FeatureStore(repo_path=str(applied_client["repo"]))
    entities = entity_frame(25, seed=5)
    assert_same_rows(
        local.get_historical_features(entities, FEATURES).to_df(),
        store.get_historical_features(entities, FEATURES).to_df(),
        ENTITY_KEYS,
    )


# --- writes ------------------------------------------------------------------------


def test_offline_write_batch_appends_rows_the_local_store_then_reads(
    write_local, write_remote, write_server
):
    rows = new_driver_rows(hours_after_end=6, drivers=(1001, 1002))
    after_write = START + timedelta(days=DAYS, hours=7)
    entities = pd.DataFrame(
        {
            "driver_id": pd.Series([1001, 1002], dtype="int64"),
            "event_timestamp": pd.Series([after_write] * 2).dt.as_unit("us"),
        }
    )
    before = write_local.get_historical_features(entities, DRIVER_FEATURES).to_df()
    assert not before["conv_rate"].isin(rows["conv_rate"]).any()

    write_remote.write_to_offline_store("driver_stats", rows)

    window = {"start_date": rows["event_timestamp"][0], "end_date": after_write}
    pulled = pull(write_local, "pull_all_from_table_or_query", **window).to_df()
    assert_same_rows(rows, pulled, DRIVER_KEYS)
    after = write_local.get_historical_features(entities, DRIVER_FEATURES).to_df()
    assert sorted(after["conv_rate"]) == sorted(rows["conv_rate"])
    # The server reads the new rows too.
    remote_after = write_remote.get_historical_features(entities, DRIVER_FEATURES).to_df()
    assert_same_rows(after, remote_after, DRIVER_KEYS)
    assert write_server.stats_json()["staged_commands"] == 0


def test_writing_to_an_unknown_feature_view_raises_feature_view_not_found(
    write_local, write_remote, write_server
):
    data_file = Path(write_local.get_data_source("driver_stats_source").path)
    rows_before = pq.read_metadata(data_file).num_rows
    view = write_remote.get_feature_view("driver_stats")
    view.name = "no_such_view"
    table = pa.Table.from_pandas(new_driver_rows(hours_after_end=30, drivers=(1003,)))
    with pytest.raises(FeatureViewNotFoundException) as missing:
        RemoteOfflineStore.offline_write_batch(write_remote.config, view, table, progress=None)
    assert "no_such_view" in str(missing.value)
    assert pq.read_metadata(data_file).num_rows == rows_before
    assert_still_serving(write_server, write_remote, write_local)


def test_write_logged_features_writes_the_rows_to_the_logging_destination(
    write_repo, write_remote, write_server
):
    service = write_remote.get_feature_service("driver_activity")
    source = FeatureServiceLoggingSource(service, PROJECT)
    n = 3
    table = logged_rows(write_remote, n)
    logs = write_repo / "data" / "logs"
    assert not list(logs.glob("*.parquet"))

    RemoteOfflineStore.write_logged_features(
        write_remote.config, table, source, service.logging_config, write_remote.registry
    )

    files = sorted(logs.glob("*.parquet"))
    assert files
    written = pa.concat_tables(pq.read_table(f) for f in files)
    assert written.num_rows == n
    expected = table.to_pandas().sort_values("__request_id").reset_index(drop=True)
    got = written.to_pandas()[list(expected.columns)].sort_values("__request_id")
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected, check_dtype=False)
    assert write_server.stats_json()["staged_commands"] == 0


def test_persist_saves_the_historical_result_to_a_registered_destination(
    write_local, write_remote, write_server, tmp_path
):
    destination = next(
        s for s in write_remote.list_data_sources() if s.name.endswith(PERSISTED_FILE)
    )
    storage = SavedDatasetFileStorage(path=destination.path)
    assert storage.to_data_source().name == destination.name  # all the client sends
    entities = entity_frame(40, seed=9)
    job = write_remote.get_historical_features(entities, FEATURES)

    job.persist(storage)

    local_copy = tmp_path / "local_persist.parquet"
    write_local.get_historical_features(entities, FEATURES).persist(
        SavedDatasetFileStorage(path=str(local_copy))
    )
    assert_same_rows(pd.read_parquet(local_copy), pd.read_parquet(destination.path), ENTITY_KEYS)

    # Like the local store, a second persist needs allow_overwrite.
    with pytest.raises(SavedDatasetLocationAlreadyExists):
        job.persist(storage)
    job.persist(storage, allow_overwrite=True)
    assert len(pd.read_parquet(destination.path)) == len(entities)
    assert write_server.stats_json()["staged_commands"] == 0


def test_persist_to_an_unregistered_destination_is_not_found(
    write_local, write_remote, write_server, tmp_path
):
    nowhere = tmp_path / "unregistered.parquet"
    job = write_remote.get_historical_features(entity_frame(5), FEATURES)
    with pytest.raises(DataSourceObjectNotFoundException):
        job.persist(SavedDatasetFileStorage(path=str(nowhere)))
    assert not nowhere.exists()
    assert_still_serving(write_server, write_remote, write_local)


# --- refusals ----------------------------------------------------------------------


@pytest.mark.parametrize("api", ["pull_latest_from_table_or_query", "pull_all_from_table_or_query"])
def test_persist_of_a_pull_is_refused_with_a_clear_message(
    api, local, remote, read_server, tmp_path
):
    window = {"start_date": START, "end_date": START + timedelta(days=1)}
    job = pull(remote, api, **window)
    target = tmp_path / "pulled.parquet"
    with pytest.raises(MalformedParameterError) as refused:
        job.persist(SavedDatasetFileStorage(path=str(target)))
    message = str(refused.value)
    assert f"persist of {api} is ambiguous" in message
    assert "data_source_name" in message
    assert not target.exists()
    # The pull's source is untouched and the server still serves.
    assert_same_rows(pull(local, api, **window).to_df(), job.to_df(), DRIVER_KEYS)
    assert_still_serving(read_server, remote, local)


@pytest.mark.parametrize("rpc", ["do_exchange", "do_put"])
def test_an_unknown_api_in_a_json_command_gets_a_clear_error(rpc, local, remote, read_server):
    send = _call_exchange if rpc == "do_exchange" else _call_put
    client = flight_client(read_server, remote)
    params = {"features": ["driver_stats:conv_rate"]}
    try:
        with pytest.raises(Exception) as refused:
            send("get_online_features", params, client, None, None)
    finally:
        client.close()
    message = str(refused.value)
    assert "unknown API 'get_online_features'" in message
    assert "get_historical_features" in message  # it says what is offered
    assert_still_serving(read_server, remote, local)


@pytest.mark.parametrize("rpc", ["do_exchange", "do_put"])
def test_an_unknown_api_is_raised_as_flightlabs_error_class(rpc, remote, read_server):
    send = _call_exchange if rpc == "do_exchange" else _call_put
    client = flight_client(read_server, remote)
    try:
        for _ in range(20):
            with pytest.raises(UnknownApiError):
                send("no_such_api", {}, client, None, None)
    finally:
        client.close()
    assert read_server.stats_json()["staged_commands"] == 0


def test_a_legacy_read_that_fails_on_do_get_leaves_nothing_staged(local, remote, read_server):
    job = remote.get_historical_features(entity_frame(5, with_request_data=False), DRIVER_FEATURES)
    params = {**job.api_parameters, "feature_refs": ["no_such_view:conv_rate"]}
    descriptor = _call_put(job.api, params, job.client, job.entity_df, None)
    assert read_server.stats_json()["staged_commands"] == 1
    with pytest.raises(FeatureViewNotFoundException):
        _call_get(job.client, descriptor)
    assert_still_serving(read_server, remote, local)


def test_a_flightlab_error_raised_by_the_stock_client_prints(local, remote, read_server):
    client = build_arrow_flight_client(
        "http", "127.0.0.1", read_server.port, remote.config.auth_config
    )
    try:
        with pytest.raises(UnknownApiError) as refused:
            _call_exchange("no_such_api", {}, client, None, None)
    finally:
        client.close()
    assert "unknown API 'no_such_api'" in str(refused.value)
