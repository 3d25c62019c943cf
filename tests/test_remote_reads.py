"""A data scientist reads through flightlab's RemoteOfflineStore and gets what
the server repo's own FeatureStore gives, row for row and value for value.

Every test runs a call on ``client_store`` (a client repo whose offline store
is the flightlab server) and the same call on ``local_store`` (the server
repo itself), and compares the two.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from feast import FeatureStore, FileSource
from offline_helpers import (
    DRIVER_KEYS,
    ENTITY_KEYS,
    FEATURES,
    SHARED_SERVER_BATCH_ROWS,
    assert_same_rows,
    make_client_store,
    offline_store_of,
    pull,
    requests_served,
    server_stats,
)

from flightlab.client import RemoteRetrievalJob
from flightlab.client.transport import Progress
from flightlab.testing.sample_repo import CUSTOMER_IDS, DAYS, DRIVER_IDS, START, entity_frame

# --- get_historical_features -------------------------------------------------------


@pytest.mark.parametrize("full_feature_names", [False, True], ids=["short", "full_names"])
def test_historical_features_for_an_entity_frame_match_the_local_store(
    full_feature_names, client_store, local_store, offline_server
):
    entities = entity_frame(60)
    served_before = requests_served(offline_server, "get_historical_features")

    job = client_store.get_historical_features(
        entities, FEATURES, full_feature_names=full_feature_names
    )
    assert isinstance(job, RemoteRetrievalJob)
    got = job.to_df()

    expected = local_store.get_historical_features(
        entities, FEATURES, full_feature_names=full_feature_names
    ).to_df()
    assert len(expected) == len(entities)
    prefix = "driver_stats__" if full_feature_names else ""
    assert f"{prefix}conv_rate" in got.columns
    assert got[f"{prefix}conv_rate"].notna().sum() > len(entities) // 2  # real values came back
    assert_same_rows(expected, got, ENTITY_KEYS)
    assert requests_served(offline_server, "get_historical_features") == served_before + 1


def _naive_nanoseconds(frame: pd.DataFrame) -> pd.DataFrame:
    frame["event_timestamp"] = frame["event_timestamp"].dt.tz_localize(None).dt.as_unit("ns")
    return frame


def _in_paris(frame: pd.DataFrame) -> pd.DataFrame:
    frame["event_timestamp"] = frame["event_timestamp"].dt.tz_convert("Europe/Paris")
    return frame


def _int32_keys(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({"driver_id": "int32", "customer_id": "int32"})


def _timestamps_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    frame["event_timestamp"] = frame["event_timestamp"].astype(str)
    return frame


# Entity frames as users write them, not as entity_frame() makes them.
ENTITY_FRAME_VARIANTS = {
    "naive_nanosecond_timestamps": _naive_nanoseconds,
    "timestamps_in_another_zone": _in_paris,
    "int32_keys": _int32_keys,
    "timestamps_as_text": _timestamps_as_text,
    "index_with_gaps": lambda frame: frame[frame.index % 3 != 0],
    "extra_column": lambda frame: frame.assign(note="kept as it is"),
    "duplicate_rows": lambda frame: pd.concat([frame, frame.head(5)]),
    "no_rows": lambda frame: frame.head(0),
}


@pytest.mark.parametrize(
    "variant", ENTITY_FRAME_VARIANTS.values(), ids=ENTITY_FRAME_VARIANTS.keys()
)
def test_entity_frames_as_users_write_them_get_the_local_answer(variant, client_store, local_store):
    entities = variant(entity_frame(24, seed=9))
    local_job = local_store.get_historical_features(entities, FEATURES)
    remote_job = client_store.get_historical_features(entities, FEATURES)
    got = remote_job.to_df()
    assert len(got) == len(entities)
    assert_same_rows(local_job.to_df(), got, ENTITY_KEYS)
    # The job's metadata (the entity rows' time bounds, in UTC) is local's too.
    for bound in ("min_event_timestamp", "max_event_timestamp"):
        ours, theirs = (getattr(j.metadata, bound) for j in (remote_job, local_job))
        assert (pd.isna(ours) and pd.isna(theirs)) or pd.Timestamp(ours) == pd.Timestamp(theirs)


@pytest.fixture(scope="module")
def uncoerced_client(offline_server, server_repo, tmp_path_factory) -> FeatureStore:
    """A client repo with ``coerce_tz_aware: false``: Feast then hands the
    entity frame to the client as it is, without the full copy it makes to
    put its timestamps in UTC (the server applies the same rule)."""
    client_repo = tmp_path_factory.mktemp("uncoerced").resolve() / "client"
    make_client_store(client_repo, offline_server.port, server_repo)
    yaml = client_repo / "feature_store.yaml"
    yaml.write_text(yaml.read_text() + "coerce_tz_aware: false\n")
    store = FeatureStore(repo_path=str(client_repo))
    assert store.config.coerce_tz_aware is False
    return store


@pytest.mark.parametrize("variant", [_naive_nanoseconds, _in_paris, _timestamps_as_text])
def test_a_client_that_does_not_coerce_timestamps_gets_the_local_answer(
    variant, uncoerced_client, local_store
):
    entities = variant(entity_frame(24, seed=10))
    expected = local_store.get_historical_features(entities, FEATURES).to_df()
    job = uncoerced_client.get_historical_features(entities, FEATURES)
    assert_same_rows(expected, job.to_df(), ENTITY_KEYS)
    assert job.metadata.min_event_timestamp.utcoffset() == timedelta(0)


@pytest.mark.filterwarnings("ignore:Discarding nonzero nanoseconds")
def test_entity_timestamps_finer_than_microseconds_are_floored(client_store, local_store):
    # duckdb refuses nanoseconds locally (ArrowInvalid: would lose data); the
    # server floors them to microseconds, the precision the store keeps.
    floored = entity_frame(20, seed=10)
    nanos = floored.assign(
        event_timestamp=floored["event_timestamp"].dt.as_unit("ns") + pd.Timedelta(nanoseconds=789)
    )
    got = client_store.get_historical_features(nanos, FEATURES).to_df()
    expected = local_store.get_historical_features(floored, FEATURES).to_df()
    assert_same_rows(expected, got, ENTITY_KEYS)


@pytest.mark.parametrize("full_feature_names", [False, True], ids=["short", "full_names"])
def test_the_on_demand_view_is_computed_from_the_request_column(
    full_feature_names, client_store, local_store
):
    entities = entity_frame(40, seed=5)
    refs = ["driver_stats:conv_rate", "conv_rate_plus_val:conv_rate_plus_val"]
    got = client_store.get_historical_features(
        entities, refs, full_feature_names=full_feature_names
    ).to_df()
    expected = local_store.get_historical_features(
        entities, refs, full_feature_names=full_feature_names
    ).to_df()
    assert_same_rows(expected, got, ENTITY_KEYS)

    conv_rate, plus_val = (
        ("driver_stats__conv_rate", "conv_rate_plus_val__conv_rate_plus_val")
        if full_feature_names
        else ("conv_rate", "conv_rate_plus_val")
    )
    computed = got.dropna(subset=[conv_rate])
    assert len(computed) > 0
    np.testing.assert_allclose(
        computed[plus_val], computed[conv_rate].astype("float64") + computed["val_to_add"]
    )


def test_the_on_demand_view_without_its_request_column_fails_as_locally(client_store, local_store):
    entities = entity_frame(5, with_request_data=False)
    refs = ["conv_rate_plus_val:conv_rate_plus_val"]
    with pytest.raises(Exception) as local_error:
        local_store.get_historical_features(entities, refs).to_df()
    with pytest.raises(type(local_error.value), match="val_to_add"):
        client_store.get_historical_features(entities, refs).to_df()


def test_historical_features_of_a_feature_service_match_the_local_store(client_store, local_store):
    entities = entity_frame(30, seed=4, with_request_data=False)
    got = client_store.get_historical_features(
        entities, client_store.get_feature_service("driver_activity")
    ).to_df()
    expected = local_store.get_historical_features(
        entities, local_store.get_feature_service("driver_activity")
    ).to_df()
    # The service's projection: all of driver_stats, only avg_rating of customer_stats.
    assert {"conv_rate", "acc_rate", "avg_daily_trips", "avg_rating"} <= set(got.columns)
    assert "lifetime_trips" not in got.columns
    assert_same_rows(expected, got, ENTITY_KEYS)


def test_a_retrieval_by_date_range_on_duckdb_is_answered_by_the_engine(
    client_store, local_store, offline_server
):
    # Feast 0.67's duckdb store has no start_date/end_date retrieval: it raises
    # TypeError locally. The server's engine answers as Feast's file store does
    # (compared in test_engine_by_dates.py): each driver's latest row.
    window = {"start_date": START + timedelta(days=1), "end_date": START + timedelta(days=2)}
    refs = ["driver_stats:conv_rate"]
    with pytest.raises(TypeError, match="start_date"):
        local_store.get_historical_features(features=refs, **window).to_df()
    before = server_stats(offline_server)["requests_by_engine"].get("flightlab", 0)
    got = client_store.get_historical_features(features=refs, **window).to_df()
    assert sorted(got["driver_id"]) == list(DRIVER_IDS)
    assert (got["event_timestamp"] == window["end_date"]).all()
    assert server_stats(offline_server)["requests_by_engine"]["flightlab"] == before + 1
    assert server_stats(offline_server)["staged_commands"] == 0


# --- pull_latest / pull_all ----------------------------------------------------------


def test_pull_latest_matches_the_local_store(client_store, local_store):
    window = {"start_date": START + timedelta(hours=12), "end_date": START + timedelta(days=3)}
    api = "pull_latest_from_table_or_query"
    got = pull(client_store, api, **window)
    assert isinstance(got, RemoteRetrievalJob)
    expected = pull(local_store, api, **window).to_df()
    assert sorted(expected["driver_id"]) == list(DRIVER_IDS)  # one latest row per driver
    assert_same_rows(expected, got.to_df(), DRIVER_KEYS)


@pytest.mark.parametrize("windowed", [True, False], ids=["dates", "no_dates"])
def test_pull_all_matches_the_local_store(windowed, client_store, local_store):
    window = (
        {"start_date": START + timedelta(days=1), "end_date": START + timedelta(days=2)}
        if windowed
        else {}
    )
    api = "pull_all_from_table_or_query"
    expected = pull(local_store, api, **window).to_df()
    got = pull(client_store, api, **window).to_df()
    if windowed:
        assert 0 < len(expected) < len(DRIVER_IDS) * DAYS * 24
    else:
        assert len(expected) == len(DRIVER_IDS) * DAYS * 24
    assert_same_rows(expected, got, DRIVER_KEYS)


def test_pull_all_of_the_customer_source_without_created_column(client_store, local_store):
    def customer_rows(store):
        return offline_store_of(store).pull_all_from_table_or_query(
            config=store.config,
            data_source=store.get_data_source("customer_stats_source"),
            join_key_columns=["customer_id"],
            feature_name_columns=["lifetime_trips", "avg_rating"],
            timestamp_field="event_timestamp",
        )

    expected = customer_rows(local_store).to_df()
    assert len(expected) == len(CUSTOMER_IDS) * DAYS
    assert_same_rows(expected, customer_rows(client_store).to_df(), ["customer_id"])


# --- data sources --------------------------------------------------------------------


@pytest.mark.parametrize("source_name", ["driver_stats_source", "customer_stats_source"])
def test_column_names_and_types_match_the_local_store(
    source_name, client_store, local_store, offline_server
):
    def columns(store):
        source = store.get_data_source(source_name)
        pairs = offline_store_of(store).get_table_column_names_and_types_from_data_source(
            store.config, source
        )
        return [(name, str(kind)) for name, kind in pairs]

    api = "get_table_column_names_and_types_from_data_source"
    served_before = requests_served(offline_server, api)
    expected = columns(local_store)
    assert ("event_timestamp", "timestamp[ns, tz=UTC]") in expected
    assert columns(client_store) == expected
    assert requests_served(offline_server, api) == served_before + 1


def test_column_names_of_a_missing_file_fail_as_locally(client_store, local_store, tmp_path):
    missing = FileSource(
        name="nowhere", path=str(tmp_path / "nowhere.parquet"), timestamp_field="event_timestamp"
    )

    def columns(store):
        store_impl = offline_store_of(store)
        return store_impl.get_table_column_names_and_types_from_data_source(store.config, missing)

    with pytest.raises(FileNotFoundError) as local_error:
        columns(local_store)
    with pytest.raises(FileNotFoundError, match="nowhere.parquet") as remote_error:
        columns(client_store)
    assert str(local_error.value) in str(remote_error.value)


def test_validate_data_source_runs_on_the_server(client_store, offline_server):
    served_before = requests_served(offline_server, "validate_data_source")
    errors_before = server_stats(offline_server)["errors_by_api"].get("validate_data_source", 0)
    for name in ("driver_stats_source", "customer_stats_source"):
        source = client_store.get_data_source(name)
        offline_store_of(client_store).validate_data_source(client_store.config, source)
    stats = server_stats(offline_server)
    assert stats["requests_by_api"]["validate_data_source"] == served_before + 2
    assert stats["errors_by_api"].get("validate_data_source", 0) == errors_before


# --- laziness, batches and progress ---------------------------------------------------


def test_making_a_job_sends_nothing_until_its_result_is_asked_for(
    client_store, local_store, offline_server
):
    entities = entity_frame(25, seed=8)
    before = server_stats(offline_server)

    job = client_store.get_historical_features(entities, FEATURES)
    pull_job = pull(
        client_store,
        "pull_latest_from_table_or_query",
        start_date=START,
        end_date=START + timedelta(days=1),
    )
    assert isinstance(job, RemoteRetrievalJob) and isinstance(pull_job, RemoteRetrievalJob)
    untouched = server_stats(offline_server)
    assert untouched["requests_by_api"] == before["requests_by_api"]
    assert untouched["staged_commands"] == 0
    assert untouched["rows_in"] == before["rows_in"]

    first = job.to_df()
    served_before = before["requests_by_api"]
    served_after = server_stats(offline_server)["requests_by_api"]
    for api, runs in (("get_historical_features", 1), ("pull_latest_from_table_or_query", 0)):
        assert served_after.get(api, 0) == served_before.get(api, 0) + runs, api

    # A job can be run again: each run is a new command with the same answer.
    second = job.to_df()
    assert_same_rows(first, second, ENTITY_KEYS)
    assert_same_rows(
        local_store.get_historical_features(entities, FEATURES).to_df(), first, ENTITY_KEYS
    )


def test_batches_and_progress_give_the_rows_of_to_df(client_store, offline_server):
    entities = entity_frame(50, seed=6)
    job = client_store.get_historical_features(entities, FEATURES)
    whole = job.to_df()

    batches = list(job.to_arrow_batches())
    # Bounded, not merged: the server splits the store's chunks to the bound
    # but does not copy them together, so there may be more than the minimum.
    assert len(batches) >= -(-len(entities) // SHARED_SERVER_BATCH_ROWS)  # ceil
    assert all(0 < b.num_rows <= SHARED_SERVER_BATCH_ROWS for b in batches)
    streamed = pa.Table.from_batches(batches).to_pandas()
    assert_same_rows(whole, streamed, ENTITY_KEYS)

    reports: list[Progress] = []
    table = job.to_arrow_with_progress(reports.append)
    assert_same_rows(whole, table.to_pandas(), ENTITY_KEYS)
    assert [r.batches for r in reports] == list(range(1, len(reports) + 1))
    assert [r.rows for r in reports] == sorted(r.rows for r in reports)
    assert reports[-1].rows == len(entities)
    assert reports[-1].total_rows in (None, len(entities))

    assert server_stats(offline_server)["staged_commands"] == 0


def test_stopping_a_batch_stream_early_leaves_the_server_clean(
    client_store, local_store, offline_server
):
    entities = entity_frame(80, seed=7)
    batches = client_store.get_historical_features(entities, FEATURES).to_arrow_batches()
    first = next(batches)
    assert 0 < first.num_rows <= SHARED_SERVER_BATCH_ROWS
    batches.close()  # the reader stops after one batch of five

    assert server_stats(offline_server)["staged_commands"] == 0
    assert_same_rows(
        local_store.get_historical_features(entities, FEATURES).to_df(),
        client_store.get_historical_features(entities, FEATURES).to_df(),
        ENTITY_KEYS,
    )
