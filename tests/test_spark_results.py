"""Spark's results streamed from the parquet files Spark writes, never collected on its driver.

Two repos on one JVM (Spark in local mode): one with a ``staging_location``
(Feast's ``to_remote_storage`` writes the files there) and one without (the
server has Spark write them under its engine's spill folder). Through a real
server, flightlab's client and Feast's stock client must get what the same
call gives on the repo's own FeatureStore: same Arrow schema, same rows. The
folder the server had Spark write is gone once the stream ends, read to the
end or dropped midway. A result larger than a small driver's memory (a server
and a local store in child processes, each its own JVM) goes through the
server where Feast's local ``to_arrow`` fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from backend_helpers import client_stores, install_backends
from feast import FeatureStore
from offline_helpers import DRIVER_KEYS, ENTITY_KEYS, FEATURES, assert_same_rows, pull

from flightlab.engine.settings import EngineSettings
from flightlab.server import OfflineServer
from flightlab.server.limits import ServerLimits
from flightlab.testing.backend_repos import FILE_REGISTRY_YAML, create_spark_repo
from flightlab.testing.sample_repo import DAYS, START, entity_frame

CLIENTS = ["flightlab", "feast"]
STAGINGS = ["staged", "unstaged"]
MISSING_DRIVER = 99_999  # entity rows without features: their integer features are null


class Served:
    """A repo, its local store, its server and its clients, and where files go."""

    def __init__(self, root: Path, staged: bool):
        self.staging = root / "staging" if staged else None
        self.spill = root / "spill"
        self.repo = create_spark_repo(root / "repo", staging_location=self.staging)
        self.local = FeatureStore(repo_path=str(self.repo))
        engine = EngineSettings(spill_dir=self.spill)
        # Small batches: every answer streams in several, and can be dropped midway.
        limits = ServerLimits(workers=2, batch_rows=16)
        self.server = OfflineServer(
            self.repo, host="127.0.0.1", port=0, limits=limits, engine=engine
        )
        self.server.start()
        registry = FILE_REGISTRY_YAML.replace(
            "data/registry.db", str(self.repo / "data" / "registry.db")
        )
        self.remotes = client_stores(root / "clients", self.server, registry)

    def result_folders(self) -> list[Path]:
        """The folders results were written to and not yet removed."""
        if self.staging is not None:
            return sorted(self.staging.glob("*")) if self.staging.exists() else []
        return sorted(self.spill.glob("spark-result-*")) if self.spill.exists() else []


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[dict[str, Served]]:
    install_backends()  # Java where missing
    root = tmp_path_factory.mktemp("spark_results").resolve()
    repos = {name: Served(root / name, name == "staged") for name in STAGINGS}
    try:
        yield repos
    finally:
        for repo in repos.values():
            repo.server.stop()


def entities_with_missing_rows() -> pd.DataFrame:
    entities = entity_frame(40, seed=5)
    entities.loc[:4, "driver_id"] = MISSING_DRIVER
    return entities


def assert_same_table(expected: pa.Table, got: pa.Table, keys: list[str]) -> None:
    """Same Arrow schema (field order, types, nullability), same rows in any order."""
    assert got.schema.remove_metadata() == expected.schema.remove_metadata()
    assert_same_rows(expected.to_pandas(), got.to_pandas(), keys)


def wait_until_removed(repo: Served, before: list[Path]) -> None:
    """The folders back to ``before``: the server removes its own as its stream
    ends, which may be just after the client has its last batch."""
    deadline = time.monotonic() + 30
    while repo.result_folders() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert repo.result_folders() == before


@pytest.mark.parametrize("staging", STAGINGS)
@pytest.mark.parametrize("client", CLIENTS)
def test_historical_retrieval_equals_the_local_store(served, staging, client):
    repo = served[staging]
    entities = entities_with_missing_rows()
    expected = repo.local.get_historical_features(entities, FEATURES)
    expected_table, expected_frame = expected.to_arrow(), expected.to_df()
    if staging == "unstaged":
        # Feast's answer went through pandas: the null integers made a float column.
        assert expected_table.schema.field("avg_daily_trips").type == pa.float64()
    # Feast's local store leaves its own staged folders: only the server's go.
    before = repo.result_folders()
    remote = repo.remotes[client].get_historical_features(entities, FEATURES)
    assert_same_table(expected_table, remote.to_arrow(), ENTITY_KEYS)
    assert_same_rows(expected_frame, remote.to_df(), ENTITY_KEYS)
    wait_until_removed(repo, before)


@pytest.mark.parametrize("staging", STAGINGS)
@pytest.mark.parametrize("client", CLIENTS)
def test_pulls_equal_the_local_store(served, staging, client):
    repo = served[staging]
    window = {"start_date": START + timedelta(days=1), "end_date": START + timedelta(days=DAYS)}
    for api in ("pull_latest_from_table_or_query", "pull_all_from_table_or_query"):
        expected = pull(repo.local, api, **window).to_arrow()
        assert expected.num_rows > 0
        before = repo.result_folders()
        got = pull(repo.remotes[client], api, **window).to_arrow()
        assert_same_table(expected, got, DRIVER_KEYS)
        wait_until_removed(repo, before)


@pytest.mark.parametrize("staging", STAGINGS)
def test_a_client_that_stops_reading_midway_leaves_no_folder(served, staging):
    repo = served[staging]
    before = repo.result_folders()
    job = repo.remotes["flightlab"].get_historical_features(entity_frame(200, seed=9), FEATURES)
    batches = job.to_arrow_batches()
    first = next(batches)
    assert first.num_rows == 16  # the server's batch size: more were to come
    # The server streams from the folder Spark wrote: there while the stream is open.
    assert len(repo.result_folders()) == len(before) + 1
    batches.close()  # the client stops reading: the server's stream is cancelled
    wait_until_removed(repo, before)
    # The server is fine: the next call is answered whole.
    assert job.to_arrow().num_rows == 200
    wait_until_removed(repo, before)
