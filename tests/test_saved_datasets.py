"""A user saves a training set through the server and reads it back later.

Feast persists a retrieval with ``RetrievalJob.persist`` and reads a saved
dataset with ``pull_all_from_table_or_query`` on the dataset's own storage,
which is no registered data source: the server must take the source the
client sends.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from feast import FeatureStore
from feast.infra.offline_stores.file_source import SavedDatasetFileStorage

from flightlab.server import OfflineServer
from flightlab.testing.sample_repo import client_repo_yaml, create_sample_repo, entity_frame

FEATURES = ["driver_stats:conv_rate", "driver_stats:avg_daily_trips", "customer_stats:avg_rating"]
KEYS = ["driver_id", "customer_id", "event_timestamp"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return create_sample_repo(tmp_path_factory.mktemp("saved") / "server")


@pytest.fixture(scope="module")
def server(repo):
    with OfflineServer(repo, port=0) as running:
        yield running


@pytest.fixture(scope="module")
def remote(server, repo, tmp_path_factory) -> FeatureStore:
    client = tmp_path_factory.mktemp("saved_client")
    (client / "data").mkdir()
    (client / "feature_store.yaml").write_text(
        client_repo_yaml("127.0.0.1", server.port, registry=repo / "data" / "registry.db")
    )
    return FeatureStore(repo_path=str(client))


def sorted_rows(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return frame[columns].sort_values(KEYS).reset_index(drop=True)


def test_a_training_set_saved_through_the_server_reads_back_through_it(
    repo, server, remote, tmp_path
):
    entities = entity_frame(40, with_request_data=False)
    job = remote.get_historical_features(entities, FEATURES)
    target = tmp_path / "training_set.parquet"

    remote.create_saved_dataset(
        from_=job, name="training_set", storage=SavedDatasetFileStorage(path=str(target))
    )
    assert target.exists()  # the server wrote it

    local = FeatureStore(repo_path=str(repo))
    expected = local.get_historical_features(entities, FEATURES).to_df()
    read_back = remote.get_saved_dataset("training_set").to_df()
    columns = list(expected.columns)
    pd.testing.assert_frame_equal(sorted_rows(expected, columns), sorted_rows(read_back, columns))
    assert server.stats_json()["staged_commands"] == 0
    assert server.stats_json()["requests_by_api"]["pull_all_from_table_or_query"] >= 1
