"""Writes that never wait without a bound, never tear what is read, and are durable.

- A writer waits for the readers of its file (a retrieval holds the file
  until its client has read the last batch, and a client may stop reading)
  only up to ``parquet_writes.SWAP_LOCK_TIMEOUT``: then it gets flightlab's
  ServerBusyError, a ``pyarrow.flight.FlightUnavailableError`` naming the
  file, the file is unchanged, the server keeps serving, and once the reader
  lets go the next write goes through. The same through Feast's stock client.
- A writer that waits too long for another writer's lock gets that error too,
  never an internal one.
- A persist holds off renames of the sources it reads, and not of its own
  destination (whose rename would then wait for the persist itself).
- Durability: both write paths flush a file before renaming it into place
  and flush the folder after; every new partition folder is flushed into its
  parent. Power loss cannot be observed in a test, so the order of the calls
  is recorded.

The servers run in this process, so the tests shorten the bound with
``monkeypatch``; each test writes rows later than all others, in a repo of
its own module.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
from feast import FeatureStore
from feast.arrow_error_handler import _get_exception_data
from feast.errors import FeastError
from feast.infra.offline_stores.file_source import SavedDatasetFileStorage
from filelock import FileLock, Timeout
from offline_helpers import arrow, new_driver_rows, raw_stage

from flightlab import errors
from flightlab.client.transport import OfflineFlightClient
from flightlab.server import OfflineServer
from flightlab.server.limits import ServerLimits
from flightlab.storage import parquet_writes
from flightlab.testing.sample_repo import DAYS, START, create_sample_repo, entity_frame
from flightlab.wire import flight_errors, protocol

BOUND = 2.0  # the writers' wait for readers, in these tests
SLACK = 8.0  # what a loaded machine may add to it
CALL_TIMEOUT = 60.0
HOURS = itertools.count(1)  # each write's rows are later than any before


# --- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return create_sample_repo(tmp_path_factory.mktemp("write_safety").resolve() / "server")


@pytest.fixture(scope="module")
def server(repo) -> Iterator[OfflineServer]:
    # Small batches: a large result is many messages, which a client that
    # stops reading leaves unsent.
    limits = ServerLimits(batch_rows=256)
    with OfflineServer(repo, host="127.0.0.1", port=0, limits=limits) as running:
        yield running


@pytest.fixture
def short_bound(monkeypatch) -> None:
    monkeypatch.setattr(parquet_writes, "SWAP_LOCK_TIMEOUT", BOUND)


def driver_file(repo: Path) -> Path:
    return repo / "data" / "driver_stats.parquet"


def write_request() -> protocol.OfflineWriteBatch:
    rows = new_driver_rows(next(HOURS), drivers=(1001, 1002))
    return protocol.OfflineWriteBatch(feature_view_name="driver_stats", table=arrow(rows))


def write(server: OfflineServer) -> dict[str, Any]:
    with OfflineFlightClient(server.location, timeout=CALL_TIMEOUT) as client:
        return client.run_action(write_request())


def pull_all(
    source: str, features: tuple[str, ...], created: str | None = None
) -> protocol.Request:
    return protocol.PullAllFromTableOrQuery(
        data_source_name=source,
        join_key_columns=(source.split("_")[0] + "_id",),
        feature_name_columns=features,
        timestamp_field="event_timestamp",
        created_timestamp_column=created,
        start_date=START,
        end_date=START + timedelta(days=DAYS * 100),
    )


DRIVER_PULL = pull_all("driver_stats_source", ("conv_rate", "acc_rate", "avg_daily_trips"))


def fetch(server: OfflineServer, request: protocol.Request) -> pa.Table:
    with OfflineFlightClient(server.location, timeout=CALL_TIMEOUT) as client:
        return client.fetch(request)


def leftovers(repo: Path) -> list[str]:
    """Temporary files a write left in the data folder."""
    return sorted(f.name for f in (repo / "data").iterdir() if ".tmp" in f.name)


@contextmanager
def renaming(path: Path) -> Iterator[None]:
    """Hold ``path`` as a writer does while it renames a new file over it."""
    descriptor = os.open(parquet_writes.swap_lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def assert_busy_naming(exc: BaseException, path: Path) -> None:
    assert isinstance(exc, errors.ServerBusyError), repr(exc)
    assert isinstance(exc, flight.FlightUnavailableError)
    assert str(path) in str(exc) and "readers" in str(exc), str(exc)


# --- a writer behind readers -------------------------------------------------------------------


def test_a_writer_behind_a_reader_gets_unavailable_within_the_bound(server, repo, short_bound):
    source = driver_file(repo)
    before = pq.read_table(source)
    with ThreadPoolExecutor(1) as pool:
        with parquet_writes.reading([source]):  # what a retrieval holds while it is read
            started = time.monotonic()
            waiting = pool.submit(write, server)
            # Reads are served while the writer waits.
            assert fetch(server, DRIVER_PULL).num_rows == before.num_rows
            with pytest.raises(flight.FlightUnavailableError) as busy:
                waiting.result(timeout=BOUND + SLACK)
            waited = time.monotonic() - started
    assert_busy_naming(busy.value, source)
    assert BOUND <= waited < BOUND + SLACK
    assert pq.read_table(source).equals(before)
    assert leftovers(repo) == []

    # The reader let go: the next write goes through, and nothing stays staged.
    assert write(server) == {"rows_written": 2}
    assert pq.read_metadata(source).num_rows == before.num_rows + 2
    assert server.stats_json()["staged_commands"] == 0


def test_a_retrieval_whose_client_stops_reading_delays_writers_only_up_to_the_bound(
    server, repo, short_bound
):
    source = driver_file(repo)
    rows_before = pq.read_metadata(source).num_rows
    # A result of many batches: more than gRPC and the worker buffer ahead.
    entities = entity_frame(300_000, seed=5, with_request_data=False)
    request = protocol.GetHistoricalFeatures(
        features=("driver_stats:conv_rate", "driver_stats:acc_rate"), entity_df=arrow(entities)
    )
    reader_client = flight.FlightClient(server.location)
    stream = None
    try:
        command_id = raw_stage(reader_client, request)
        info = reader_client.get_flight_info(protocol.command_descriptor(command_id))
        stream = reader_client.do_get(info.endpoints[0].ticket)
        assert stream.read_chunk().data.num_rows > 0  # then the client stops reading
        with pytest.raises(flight.FlightUnavailableError) as busy:
            write(server)
        assert_busy_naming(busy.value, source)
        assert pq.read_metadata(source).num_rows == rows_before
    finally:
        if stream is not None:
            stream.cancel()  # the reader lets go: the server ends its stream
        reader_client.close()

    deadline = time.monotonic() + SLACK
    while True:  # the server notices the cancelled stream within moments
        try:
            assert write(server) == {"rows_written": 2}
            break
        except errors.ServerBusyError:
            if time.monotonic() > deadline:
                raise
    assert pq.read_metadata(source).num_rows == rows_before + 2
    assert fetch(server, DRIVER_PULL).num_rows == rows_before + 2


def stock_client_store(path: Path, server: OfflineServer, server_repo: Path) -> FeatureStore:
    """A client repo with Feast's own ``type: remote`` offline store."""
    (path / "data").mkdir(parents=True, exist_ok=True)
    config = {
        "project": "flightlab_sample",
        "provider": "local",
        "registry": {"path": str(server_repo / "data" / "registry.db"), "cache_ttl_seconds": 0},
        "online_store": {"type": "sqlite", "path": "data/online.db"},
        # No retries: the busy error itself is what is checked.
        "offline_store": {
            "type": "remote",
            "host": "127.0.0.1",
            "port": server.port,
            "connection_retries": 0,
        },
        "entity_key_serialization_version": 3,
    }
    (path / "feature_store.yaml").write_text(json.dumps(config))
    return FeatureStore(repo_path=str(path))


def test_feasts_stock_client_gets_unavailable_from_a_writer_behind_a_reader(
    server, repo, short_bound, tmp_path
):
    source = driver_file(repo)
    rows_before = pq.read_metadata(source).num_rows
    stock = stock_client_store(tmp_path / "client", server, repo)
    rows = new_driver_rows(next(HOURS), drivers=(1003,))
    with parquet_writes.reading([source]):
        with pytest.raises(flight.FlightUnavailableError) as busy:
            stock.write_to_offline_store("driver_stats", rows)
    assert str(source) in str(busy.value)
    assert pq.read_metadata(source).num_rows == rows_before
    stock.write_to_offline_store("driver_stats", rows)
    assert pq.read_metadata(source).num_rows == rows_before + 1


# --- a writer behind another writer ------------------------------------------------------------


def test_a_writer_behind_another_writers_lock_gets_unavailable(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"x": [1]}), path)
    with FileLock(str(parquet_writes.lock_path(path))):  # another writer, in another process
        with pytest.raises(errors.ServerBusyError) as busy:
            with parquet_writes.destination_lock(path, timeout=0.2):
                pass
    # It reaches a client as unavailable: retry later.
    assert isinstance(flight_errors.to_flight_error(busy.value), flight.FlightUnavailableError)
    assert str(path) in str(busy.value) and "another writer" in str(busy.value)
    with parquet_writes.destination_lock(path, timeout=0.2):
        pass  # free again


def test_a_lock_timeout_from_elsewhere_is_unavailable_not_internal():
    timeout = Timeout("/data/.rows.parquet.lock")
    assert errors.failure_status(timeout) == errors.UNAVAILABLE
    sent = flight_errors.to_flight_error(timeout)
    assert type(sent) is flight.FlightUnavailableError
    # Both clients re-create it as flightlab's busy error, a FlightUnavailableError.
    detail = flight_errors.decode_detail(sent.extra_info)
    assert detail is not None and detail["class"] == "ServerBusyError"
    assert "rows.parquet" in detail["message"]
    for again in (
        flight_errors.exception_from_detail(detail),
        FeastError.from_error_detail(_get_exception_data(str(sent))),
    ):
        assert isinstance(again, errors.ServerBusyError), repr(again)
        assert isinstance(again, flight.FlightUnavailableError)


# --- persist ----------------------------------------------------------------------------------


def test_a_persist_holds_off_renames_of_the_sources_it_reads(server, repo, tmp_path):
    source = driver_file(repo)
    target = tmp_path / "persisted.parquet"
    storage = SavedDatasetFileStorage(path=str(target)).to_proto().SerializeToString()
    request = protocol.Persist(retrieval=DRIVER_PULL, storage=storage)
    with OfflineFlightClient(server.location, timeout=CALL_TIMEOUT) as client:
        with ThreadPoolExecutor(1) as pool:
            with renaming(source):  # a writer in the middle of replacing the source
                persisting = pool.submit(client.run_action, request)
                time.sleep(1.5)
                # It waits to read until the rename is over.
                assert not persisting.done()
                assert not target.exists()
            result = persisting.result(timeout=CALL_TIMEOUT)
    assert "persisted.parquet" in result["persisted_to"]
    assert pq.read_metadata(target).num_rows == pq.read_metadata(source).num_rows


def test_a_persist_into_the_file_it_reads_does_not_wait_on_itself(server, repo, short_bound):
    source = repo / "data" / "customer_stats.parquet"
    before = pq.read_table(source)
    request = protocol.Persist(
        retrieval=pull_all("customer_stats_source", ("lifetime_trips", "avg_rating")),
        destination_name="customer_stats_source",
        allow_overwrite=True,
    )
    started = time.monotonic()
    with OfflineFlightClient(server.location, timeout=CALL_TIMEOUT) as client:
        client.run_action(request)
    assert time.monotonic() - started < BOUND  # not a wait for itself, then a busy error
    after = pq.read_table(source)
    assert sorted(after.column_names) == sorted(before.column_names)
    assert after.num_rows == before.num_rows
    assert leftovers(repo) == []


# --- durability ---------------------------------------------------------------------------------


@pytest.fixture
def disk_calls(monkeypatch) -> list[tuple[str, ...]]:
    """Records, in order, every fsync (by the path of what it flushed), rename
    and folder creation, and still makes them."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name what a descriptor points at")
    calls: list[tuple[str, ...]] = []
    real_fsync, real_replace, real_mkdir = os.fsync, os.replace, os.mkdir

    def fsync(descriptor: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source: Any, target: Any, **kwargs: Any) -> None:
        calls.append(("replace", str(source), str(target)))
        real_replace(source, target, **kwargs)

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        real_mkdir(path, *args, **kwargs)
        calls.append(("mkdir", str(path)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "mkdir", mkdir)
    return calls


def position(calls: list[tuple[str, ...]], *call: str) -> int:
    assert call in calls, f"{call} not among {calls}"
    return calls.index(call)


def test_an_append_flushes_the_new_file_renames_it_then_flushes_the_folder(tmp_path, disk_calls):
    tmp_path = tmp_path.resolve()  # as /proc names what was flushed
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), path)
    disk_calls.clear()

    assert parquet_writes.append_to_parquet_source(path, pa.table({"x": [3]})) == 3

    [(_, temp, target)] = [c for c in disk_calls if c[0] == "replace"]
    assert target == str(path) and Path(temp).parent == tmp_path
    flushed_file = position(disk_calls, "fsync", temp)
    renamed = position(disk_calls, "replace", temp, target)
    flushed_folder = position(disk_calls, "fsync", str(tmp_path))
    assert flushed_file < renamed < flushed_folder
    assert pq.read_table(path).column("x").to_pylist() == [3, 1, 2]


def test_logged_rows_in_new_partition_folders_are_flushed_into_their_parents(tmp_path, disk_calls):
    tmp_path = tmp_path.resolve()  # as /proc names what was flushed
    folder = tmp_path / "logs" / "service"  # neither exists yet
    table = pa.table({"day": ["d1", "d2", "d1"], "value": [1, 2, 3]})

    written = parquet_writes.add_files_atomically(folder, table, ["day"])

    assert sorted(f.parent.name for f in written) == ["day=d1", "day=d2"]
    made = [
        Path(c[1]) for c in disk_calls if c[0] == "mkdir" and Path(c[1]).is_relative_to(tmp_path)
    ]
    new_folders = {tmp_path / "logs", folder, folder / "day=d1", folder / "day=d2"}
    assert new_folders <= set(made)
    for new in new_folders:
        # The new folder's entry is flushed into its parent after it is made,
        # and before any file is renamed into it.
        created = position(disk_calls, "mkdir", str(new))
        assert any(c == ("fsync", str(new.parent)) for c in disk_calls[created + 1 :]), (
            f"{new.parent} not flushed after {new} was made"
        )
    for file in written:
        [(_, temp, _)] = [c for c in disk_calls if c[0] == "replace" and c[2] == str(file)]
        renamed = position(disk_calls, "replace", temp, str(file))
        assert position(disk_calls, "fsync", temp) < renamed
        assert position(disk_calls, "mkdir", str(file.parent)) < renamed
        assert ("fsync", str(file.parent)) in disk_calls[renamed + 1 :]
    assert pd.read_parquet(folder).shape[0] == 3
