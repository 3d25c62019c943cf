"""The engine's faults at a size that fits CI (``scripts/faults.py`` runs the
same drills at 10M entity rows and prints their seconds and RSS): a client
gone halfway through a spilling stream frees the request's database and spill
folder; two spilling requests at once both answer; a spill over its cap, or
on a full disk, is a ResourceExhaustedError naming the spill folder.

The server is the real CLI in a child process (``--engine-memory-limit 16MB``,
one thread: the 200,000-row source alone outgrows it, so every join spills);
answers are compared with the local FeatureStore on the same repo.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow.flight as flight
import pytest
from feast import FeatureStore
from offline_helpers import assert_same_rows, stock_client_yaml, wait_until, watching_spill

from flightlab.client.transport import OfflineFlightClient
from flightlab.engine.database import RequestDatabases
from flightlab.engine.settings import EngineSettings
from flightlab.engine.spill import owned_folder
from flightlab.engine.usage import UsageCounters
from flightlab.errors import ResourceExhaustedError as EngineResourceError
from flightlab.testing.faults.engine import (
    client_gone_midstream,
    open_databases,
    request_folders,
)
from flightlab.testing.faults.large import (
    FEATURE_REFS,
    create_large_repo,
    entity_rows,
    large_request,
)
from flightlab.testing.faults.servers import server_process
from flightlab.testing.processes import ServerProcess
from flightlab.testing.sample_repo import client_repo_yaml
from flightlab.wire.flight_errors import ResourceExhaustedError

pytestmark = pytest.mark.timeout(300)

SOURCE_ROWS = 200_000
STREAM_ROWS = 100_000  # 100 batches of 1,000 rows: the client leaves after 3
KEYS = ["user_id", "event_timestamp"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return create_large_repo(tmp_path_factory.mktemp("engine_faults") / "repo", SOURCE_ROWS)


@pytest.fixture(scope="module")
def local(repo) -> FeatureStore:
    return FeatureStore(repo_path=str(repo))


def _spilling_server(repo: Path, spill: Path, *options: str) -> Iterator[ServerProcess]:
    engine = ("--engine-threads", "1", "--spill-dir", str(spill), "--batch-rows", "1000")
    log = spill.parent / f"{spill.name}.log"
    with server_process(repo, *engine, *options, "--log-level", "info", log=log) as server:
        yield server


spilling_server = contextlib.contextmanager(_spilling_server)


@pytest.fixture(scope="module")
def spill(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spill")


@pytest.fixture(scope="module")
def server(repo, spill) -> Iterator[ServerProcess]:
    yield from _spilling_server(repo, spill, "--engine-memory-limit", "16MB")


def client_store(folder: Path, server: ServerProcess, repo: Path, kind: str) -> FeatureStore:
    """A client repo on ``server`` reading ``repo``'s registry: flightlab's
    client or Feast's stock ``remote`` one."""
    registry = repo / "data" / "registry.db"
    if kind == "flightlab":
        yaml = client_repo_yaml("127.0.0.1", server.port, "flightlab_large", registry)
    else:
        yaml = stock_client_yaml(server.port, registry)
        yaml = yaml.replace("project: flightlab_sample", "project: flightlab_large")
    folder.mkdir(parents=True)
    (folder / "feature_store.yaml").write_text(yaml)
    return FeatureStore(repo_path=str(folder))


def assert_answers_as_local(store: FeatureStore, local: FeatureStore, rows: int, seed: int):
    entities = entity_rows(local_repo(local), rows, seed).to_pandas()
    assert_same_rows(
        local.get_historical_features(entities, list(FEATURE_REFS)).to_df(),
        store.get_historical_features(entities, list(FEATURE_REFS)).to_df(),
        KEYS,
    )


def local_repo(store: FeatureStore) -> Path:
    return Path(store.repo_path)


def assert_clean(server: ServerProcess, spill: Path) -> None:
    """The failed or abandoned request's folder is gone, its database closed."""
    assert wait_until(lambda: not request_folders(spill)), request_folders(spill)
    assert wait_until(lambda: open_databases(server.location) == 0)


# --- a client gone halfway -----------------------------------------------------------------


@pytest.mark.parametrize("how", ["kill", "close"])
def test_a_client_gone_mid_stream_frees_the_database_and_spill_folder(
    how, server, repo, spill, local, tmp_path
):
    gone = client_gone_midstream(server, repo, spill, STREAM_ROWS, how=how, timeout=30)
    assert gone["client"].startswith("read 3000 rows"), gone
    assert gone["client_exit_code"] == (-9 if how == "kill" else 0), gone
    assert gone["spilled_folders"] >= 1, gone  # the join spilled before its first batch
    # Polled for up to 30 s after the client went: both happened.
    assert gone["seconds_to_spill_gone"] is not None, gone
    assert gone["seconds_to_no_open_database"] is not None, gone
    assert_clean(server, spill)
    assert_answers_as_local(client_store(tmp_path / how, server, repo, "flightlab"), local, 2000, 5)


# --- a server killed mid-join ------------------------------------------------------------


def test_a_killed_servers_spill_folder_is_swept_by_the_next_server_on_the_host(repo, tmp_path):
    spill = tmp_path / "spill"
    spill.mkdir()
    # Not this server's to sweep: another host's (a shared mount), a running process's.
    others = [
        spill / f"request-some_other_host-1-{'a' * 32}",
        owned_folder(spill, "spark-result"),  # this test's own process: running
    ]
    for folder in others:
        folder.mkdir()
    with contextlib.ExitStack() as stack:
        killed = stack.enter_context(spilling_server(repo, spill, "--engine-memory-limit", "16MB"))
        client = stack.enter_context(OfflineFlightClient(killed.location, timeout=600))
        stream = client.iter_batches(large_request(repo, STREAM_ROWS))
        for _ in range(3):
            next(stream)  # the join has spilled: its folder holds files
        assert any(any(f.iterdir()) for f in request_folders(spill) if f not in others)
        killed.process.kill()
        killed.process.wait()
        with contextlib.suppress(Exception):
            stream.close()
    left = [f for f in request_folders(spill) if f not in others]
    assert left, "a killed server leaves its spill folder"

    with spilling_server(repo, spill, "--engine-memory-limit", "16MB") as next_server:
        assert [f for f in request_folders(spill) if f not in others] == []
        assert all(folder.is_dir() for folder in others)
        assert open_databases(next_server.location) == 0


# --- two at once ---------------------------------------------------------------------------


def test_two_spilling_requests_at_once_both_answer_as_local(server, repo, spill, local, tmp_path):
    stores = [client_store(tmp_path / f"c{i}", server, repo, "flightlab") for i in range(2)]
    entities = [entity_rows(repo, 50_000, seed=40 + i).to_pandas() for i in range(2)]
    # Feast's local duckdb store runs one query at a time: the references first.
    expected = [local.get_historical_features(e, list(FEATURE_REFS)).to_df() for e in entities]
    answers: dict[int, object] = {}

    def run(index: int) -> None:
        try:
            job = stores[index].get_historical_features(entities[index], list(FEATURE_REFS))
            answers[index] = job.to_df()
        except BaseException as exc:
            answers[index] = exc

    with watching_spill(spill) as spilled:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for index in range(2):
        assert_same_rows(expected[index], answers[index], KEYS)
    assert len(spilled) >= 2  # each spilled, into a folder of its own
    assert server.process.poll() is None
    assert_clean(server, spill)


# --- the spill folder full -----------------------------------------------------------------


@pytest.fixture(scope="module")
def capped_spill(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("capped_spill")


@pytest.fixture(scope="module")
def capped_server(repo, capped_spill) -> Iterator[ServerProcess]:
    # 48 MB holds a small request's join; a 200,000-row one spills past 1 MB.
    limits = ("--engine-memory-limit", "48MB", "--spill-max-size", "1MB")
    yield from _spilling_server(repo, capped_spill, *limits)


@pytest.mark.parametrize("kind", ["flightlab", "stock"])
def test_a_spill_over_its_cap_is_a_named_resource_error(
    kind, capped_server, repo, capped_spill, local, tmp_path
):
    store = client_store(tmp_path / kind, capped_server, repo, kind)
    entities = entity_rows(repo, 200_000, seed=9).to_pandas()
    with pytest.raises(ResourceExhaustedError) as raised:
        store.get_historical_features(entities, list(FEATURE_REFS)).to_df()
    assert isinstance(raised.value, flight.FlightUnavailableError)
    message = str(raised.value)
    assert f"spill folder {capped_spill} is full" in message
    for option in ("1MB; --spill-max-size", "--spill-dir", "--engine-memory-limit (now 48MB)"):
        assert option in message, message
    assert "failed to offload data block" in message  # DuckDB's own words, at the end
    assert_clean(capped_server, capped_spill)
    assert_answers_as_local(store, local, 1000, seed=10)
    # The server logged the failure, as resource-exhausted, without a traceback.
    assert f"{capped_spill} is full" in capped_server.log()


def test_a_full_disk_and_other_io_errors(tmp_path):
    # DuckDB's words on a real full disk (an 8 MB tmpfs as the spill folder),
    # raised as its IOException at the query's start and, mid-stream, through
    # Arrow's stream reader as an OSError: both name the folder; an I/O error
    # that is not about space stays what it was.
    databases = RequestDatabases(EngineSettings(spill_dir=tmp_path), UsageCounters())
    full = (
        f'IO Error: Could not write file "{tmp_path}/request-0/duckdb_temp_storage_'
        'DEFAULT-0.tmp": No space left on device'
    )
    for raised in (duckdb.IOException(full), OSError(full)):
        with pytest.raises(EngineResourceError) as named:
            with databases.memory_errors_named():
                raise raised
        assert f"the disk of the engine's spill folder {tmp_path} is full" in str(named.value)
        assert "--spill-dir" in str(named.value) and "No space left on device" in str(named.value)
    missing = duckdb.IOException('IO Error: No files found that match the pattern "x.parquet"')
    with pytest.raises(duckdb.IOException):
        with databases.memory_errors_named():
            raise missing
