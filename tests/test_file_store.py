"""The core retrieval on Feast's other local offline store: file (dask).

The shared repo's registry and parquet files, served by a second server whose
repo says ``offline_store: type: file``. Dask drops entity rows that have no
feature row within the TTL (duckdb keeps them, with nulls): local and remote
run the same store, so they must still agree row for row.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from feast import FeatureStore
from feast.infra.offline_stores.dask import DaskOfflineStore
from offline_helpers import (
    DRIVER_KEYS,
    ENTITY_KEYS,
    FEATURES,
    assert_same_rows,
    file_store_view_repo,
    make_client_store,
    offline_store_of,
    registry_of,
)

from flightlab.server import OfflineServer
from flightlab.testing.sample_repo import DRIVER_IDS, START, entity_frame


@pytest.fixture(scope="module")
def file_repo(server_repo, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("file_store").resolve() / "server"
    return file_store_view_repo(repo, registry_of(server_repo))


@pytest.fixture(scope="module")
def file_server(file_repo) -> Iterator[OfflineServer]:
    with OfflineServer(file_repo, port=0) as server:
        yield server


@pytest.fixture(scope="module")
def file_local(file_repo) -> FeatureStore:
    store = FeatureStore(repo_path=str(file_repo))
    assert isinstance(offline_store_of(store), DaskOfflineStore)
    return store


@pytest.fixture(scope="module")
def file_remote(file_server, server_repo, tmp_path_factory) -> FeatureStore:
    client_repo = tmp_path_factory.mktemp("file_store_client").resolve() / "client"
    return make_client_store(client_repo, file_server.port, server_repo)


@pytest.mark.parametrize("full_feature_names", [False, True], ids=["short", "full_names"])
def test_historical_features_on_the_file_store_match_the_local_store(
    full_feature_names, file_local, file_remote, local_store
):
    # Sixty rows within the data, and five from the day before it starts.
    early = entity_frame(5, seed=51).assign(event_timestamp=START - timedelta(days=1))
    entities = pd.concat([entity_frame(60), early], ignore_index=True)
    expected = file_local.get_historical_features(
        entities, FEATURES, full_feature_names=full_feature_names
    ).to_df()
    got = file_remote.get_historical_features(
        entities, FEATURES, full_feature_names=full_feature_names
    ).to_df()
    assert_same_rows(expected, got, ENTITY_KEYS)

    # The two stores really differ: dask drops the rows without features in
    # the TTL, duckdb keeps them (with nulls).
    assert len(expected) == 60
    assert len(local_store.get_historical_features(entities, FEATURES).to_df()) == 65


def test_a_retrieval_by_date_range_on_the_file_store_matches_the_local_store(
    file_local, file_remote
):
    # No entity DataFrame: every driver's latest row in [start_date, end_date].
    window = {
        "start_date": START + timedelta(days=1, hours=6),
        "end_date": START + timedelta(days=2),
    }
    refs = ["driver_stats:conv_rate", "driver_stats:acc_rate"]
    expected = file_local.get_historical_features(features=refs, **window).to_df()
    got = file_remote.get_historical_features(features=refs, **window).to_df()
    assert sorted(expected["driver_id"]) == list(DRIVER_IDS)
    assert_same_rows(expected, got, DRIVER_KEYS)
