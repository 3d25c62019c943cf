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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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
from flightlab.testing.processes import (
    current_rss,
    peak_rss,
    reset_peak_rss,
    running_server,
    serve_offline_command,
)
from flightlab.testing.sample_repo import DAYS, START, entity_frame
from flightlab.testing.spark_large import (
    ROW_BYTES,
    apply_in_process,
    create_large_spark_repo,
    expected_totals,
    local_pull_in_child,
    remote_pull,
)

CLIENTS = ["flightlab", "feast"]
STAGINGS = ["staged", "unstaged"]
MISSING_DRIVER = 99_999  # entity rows without features: their integer features are null


class Served:
    """A repo, its local store, its server and its clients, and where files go."""

    def __init__(self, root: Path, staged: bool):
        self.staging = root / "staging" if staged else None
        self.spill = root / "spill"
        # Applied in this process: one JVM for both repos, not one per `feast apply`.
        self.repo = create_spark_repo(root / "repo", apply=False, staging_location=self.staging)
        apply_in_process(self.repo)
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


def wait_for(condition: Callable[[], bool], seconds: float = 30) -> bool:
    """Whether ``condition`` holds within ``seconds``: the server ends a stream
    (removes its folder, logs it) just after the client has its last batch."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def wait_until_removed(repo: Served, before: list[Path]) -> None:
    """The folders back to ``before``."""
    wait_for(lambda: repo.result_folders() == before)
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
def test_an_empty_result_equals_the_local_store(served, staging):
    repo = served[staging]
    window = {"start_date": START - timedelta(days=9), "end_date": START - timedelta(days=8)}
    api = "pull_all_from_table_or_query"
    expected = pull(repo.local, api, **window).to_arrow()
    assert expected.num_rows == 0
    before = repo.result_folders()
    assert_same_table(expected, pull(repo.remotes["flightlab"], api, **window).to_arrow(), [])
    wait_until_removed(repo, before)


@pytest.mark.parametrize("staging", STAGINGS)
def test_a_client_that_stops_reading_midway_leaves_no_folder(served, staging, caplog):
    repo = served[staging]
    before = repo.result_folders()
    rows = 20_000  # 1,250 batches of 16: far more than the server reads ahead
    job = repo.remotes["flightlab"].get_historical_features(entity_frame(rows, seed=9), FEATURES)
    with caplog.at_level("INFO", logger="flightlab"):
        batches = job.to_arrow_batches()
        assert next(batches).num_rows == 16
        batches.close()  # the client stops reading: the server's stream is cancelled
        wait_until_removed(repo, before)
        # The server had Spark write a folder, streamed from it and cut the stream short.
        logged = lambda: [r.getMessage() for r in caplog.records]  # noqa: E731
        gone = ("client stopped reading", "client went away")
        assert wait_for(lambda: any(g in m for m in logged() for g in gone))
    written = [m for m in logged() if "parquet file(s) in" in m]
    assert len(written) == 1
    assert not Path(written[0].rsplit(" in ", 1)[1]).exists()
    # The server is fine: the next call is answered whole.
    small = repo.remotes["flightlab"].get_historical_features(entity_frame(40, seed=9), FEATURES)
    assert small.to_arrow().num_rows == 40
    wait_until_removed(repo, before)


LARGE_ROWS = 14_000_000  # 534 MB of Arrow: more than the driver's 512 MB (Spark's floor)


def test_a_result_larger_than_the_driver_goes_through_where_the_local_store_fails(tmp_path):
    install_backends()
    # Applied here: with the module's JVM, not a third one in a `feast apply` process.
    repo = create_large_spark_repo(tmp_path / "repo", LARGE_ROWS, "512m", in_process=True)
    spill = tmp_path / "spill"
    command = serve_offline_command(repo, "--spill-dir", str(spill))
    with running_server(command, log=tmp_path / "server.log", timeout=180) as server:
        registry = FILE_REGISTRY_YAML.replace(
            "data/registry.db", str(repo / "data" / "registry.db")
        )
        client = client_stores(tmp_path / "clients", server, registry)["flightlab"]
        # Feast's local store on the same repo, its own JVM with the same driver, meanwhile.
        with ThreadPoolExecutor(1) as pool:
            local = pool.submit(local_pull_in_child, repo, 240)
            before = current_rss(server.pid) or 0
            reset_peak_rss(server.pid)
            got = remote_pull(client)
            growth = (peak_rss(server.pid) or 0) - before
            outcome = local.result()
        assert sorted(spill.glob("spark-result-*")) == []
    assert got == expected_totals(LARGE_ROWS)
    # The server held a few batches, never the result.
    assert growth < LARGE_ROWS * ROW_BYTES / 2, f"server RSS grew by {growth / 2**20:.0f} MB"
    assert outcome.rows is None, "Feast's local to_arrow held the whole result after all"
    assert "OutOfMemoryError" in (outcome.error or ""), outcome.error
