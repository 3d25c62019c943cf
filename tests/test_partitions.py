"""A large retrieval served in partitions, fetched concurrently.

The server here splits a request into partitions from 10 entity rows each (a
real server splits from 250,000), so a 60-row frame read with ``partitions:
4`` comes as four streams. Whatever the client reads them with, the answer is
the local store's; Feast's stock client, which asks for no partitions, gets
the whole answer on one stream; a partition's ticket serves once.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from feast import FeatureStore
from offline_helpers import (
    ENTITY_KEYS,
    FEATURES,
    assert_same_rows,
    assert_serving_and_clean,
    flight_error_detail,
    raw_stage,
    registry_of,
    stock_client,
    wait_until,
)

from flightlab.client.partitions import PartitionedReader
from flightlab.client.transport import OfflineFlightClient, Progress
from flightlab.server import OfflineServer
from flightlab.server.limits import ServerLimits
from flightlab.server.partitions import entity_range
from flightlab.testing.sample_repo import client_repo_yaml, entity_frame
from flightlab.wire import protocol
from flightlab.wire.headers import PARTITIONS_HEADER

ROWS = 60
PARTITIONS = 4
REFS = ["driver_stats:conv_rate", "customer_stats:avg_rating"]


@pytest.fixture(scope="module")
def partitioning_server(server_repo) -> Iterator[OfflineServer]:
    limits = ServerLimits(batch_rows=4, min_partition_rows=10, max_partitions=PARTITIONS)
    with OfflineServer(server_repo, host="127.0.0.1", port=0, limits=limits) as server:
        yield server


def _client_store(path: Path, server: OfflineServer, repo: Path, partitions: int) -> FeatureStore:
    """flightlab's client, set to read up to ``partitions`` partitions."""
    (path / "data").mkdir(parents=True, exist_ok=True)
    yaml = client_repo_yaml("127.0.0.1", server.port, registry=registry_of(repo))
    port_line = f"  port: {server.port}\n"
    (path / "feature_store.yaml").write_text(
        yaml.replace(port_line, f"{port_line}  partitions: {partitions}\n")
    )
    return FeatureStore(repo_path=str(path))


@pytest.fixture(scope="module")
def reading_partitions(partitioning_server, server_repo, tmp_path_factory) -> FeatureStore:
    folder = tmp_path_factory.mktemp("partitions").resolve()
    return _client_store(folder / "client", partitioning_server, server_repo, PARTITIONS)


def _numbered_entities(rows: int = ROWS):
    """Entity rows with their position as an extra column, which the answer keeps."""
    frame = entity_frame(rows, seed=21)
    frame["position"] = range(rows)
    return frame


def _served_partitions(server: OfflineServer) -> list[flight.FlightEndpoint]:
    """The endpoints a client asking for partitions gets for a 60-row retrieval."""
    request = protocol.GetHistoricalFeatures(
        features=tuple(REFS), entity_df=pa.Table.from_pandas(_numbered_entities())
    )
    raw = flight.FlightClient(server.location)
    command_id = raw_stage(raw, request)
    options = flight.FlightCallOptions(headers=[(PARTITIONS_HEADER.encode(), b"4")])
    info = raw.get_flight_info(protocol.command_descriptor(command_id), options)
    return raw, list(info.endpoints)


def test_to_arrow_over_partitions_is_the_local_answer_in_entity_range_order(
    reading_partitions, local_store, partitioning_server
):
    entities = _numbered_entities()

    got = reading_partitions.get_historical_features(entities, FEATURES).to_df()

    expected = local_store.get_historical_features(entities, FEATURES).to_df()
    assert_same_rows(expected, got, [*ENTITY_KEYS, "position"])
    # Partition k's rows (the k-th range of entity rows) come before partition k+1's.
    ranges = [entity_range(ROWS, k, PARTITIONS) for k in range(PARTITIONS)]
    range_of = [k for k, (start, length) in enumerate(ranges) for _ in range(length)]
    assert [range_of[p] for p in got["position"]] == sorted(range_of)
    assert len(partitioning_server.staging) == 0


def test_progress_counts_every_partition(reading_partitions, local_store):
    entities = _numbered_entities()
    seen: list[Progress] = []

    job = reading_partitions.get_historical_features(entities, REFS)
    table = job.to_arrow_with_progress(progress=seen.append)

    assert table.num_rows == ROWS
    assert seen[-1].rows == ROWS and seen[-1].total_rows == ROWS
    assert seen[-1].fraction == 1.0
    assert [p.rows for p in seen] == sorted(p.rows for p in seen)


def test_streamed_batches_over_partitions_hold_every_row_once(reading_partitions, local_store):
    entities = _numbered_entities()

    job = reading_partitions.get_historical_features(entities, REFS)
    batches = list(job.to_arrow_batches())

    assert len(batches) >= PARTITIONS  # four streams of 4-row batches
    got = pa.Table.from_batches(batches).to_pandas()
    expected = local_store.get_historical_features(entities, REFS).to_df()
    assert_same_rows(expected, got, [*ENTITY_KEYS, "position"])


def test_a_stream_left_early_ends_every_partition_and_keeps_no_state(
    reading_partitions, partitioning_server, local_store
):
    job = reading_partitions.get_historical_features(_numbered_entities(), REFS)
    batches = job.to_arrow_batches()

    first = next(batches)
    batches.close()

    assert first.num_rows > 0
    assert wait_until(lambda: partitioning_server.drain.in_flight == 0)
    assert_serving_and_clean(partitioning_server, reading_partitions, local_store)


def test_feasts_stock_client_gets_the_whole_answer_on_one_stream(
    partitioning_server, server_repo, local_store, tmp_path
):
    stock = stock_client(tmp_path / "stock", partitioning_server, registry_of(server_repo))
    entities = _numbered_entities()

    got = stock.get_historical_features(entities, FEATURES).to_df()

    expected = local_store.get_historical_features(entities, FEATURES).to_df()
    assert_same_rows(expected, got, [*ENTITY_KEYS, "position"])


def test_each_partition_ticket_serves_its_range(partitioning_server):
    raw, endpoints = _served_partitions(partitioning_server)
    try:
        assert len(endpoints) == PARTITIONS
        positions = []
        for k, endpoint in enumerate(endpoints):
            part = raw.do_get(endpoint.ticket).read_all()
            start, length = entity_range(ROWS, k, PARTITIONS)
            assert sorted(part.column("position").to_pylist()) == list(range(start, start + length))
            positions += part.column("position").to_pylist()
        assert sorted(positions) == list(range(ROWS))
        assert len(partitioning_server.staging) == 0  # gone with its last partition
    finally:
        raw.close()


def test_a_partition_read_twice_is_refused_and_the_others_still_serve(partitioning_server):
    raw, endpoints = _served_partitions(partitioning_server)
    try:
        raw.do_get(endpoints[0].ticket).read_all()
        with pytest.raises(flight.FlightError) as twice:
            raw.do_get(endpoints[0].ticket).read_all()
        detail = flight_error_detail(twice.value)
        assert detail["class"] == "UnknownCommandError"
        assert "partition 0 of command" in detail["message"]
        assert "already been read" in detail["message"]
        # One reader's mistake (a worker reading its shard twice) does not
        # take the partitions others have yet to read; the last one read,
        # the command is gone.
        for endpoint in endpoints[1:]:
            assert raw.do_get(endpoint.ticket).read_all().num_rows > 0
        assert len(partitioning_server.staging) == 0
    finally:
        raw.close()


def test_small_requests_and_pulls_come_on_one_stream(partitioning_server, tmp_path, server_repo):
    with OfflineFlightClient(partitioning_server.location, partitions=PARTITIONS) as client:
        small = protocol.GetHistoricalFeatures(
            features=tuple(REFS), entity_df=pa.Table.from_pandas(entity_frame(15))
        )
        command_id = client.stage(small)
        options = client._options(None, partitions=True)
        info = client._client.get_flight_info(protocol.command_descriptor(command_id), options)
        assert len(info.endpoints) == 1  # 15 rows: one partition of at least 10
        client.drop(command_id)
    assert len(partitioning_server.staging) == 0


def test_a_failing_request_fails_every_partition_and_keeps_no_state(
    reading_partitions, partitioning_server
):
    with pytest.raises(Exception, match="no_such_view"):
        reading_partitions.get_historical_features(
            _numbered_entities(), ["no_such_view:conv_rate"]
        ).to_arrow()
    assert len(partitioning_server.staging) == 0


def test_a_malformed_partition_header_is_refused(partitioning_server):
    request = protocol.GetHistoricalFeatures(
        features=tuple(REFS), entity_df=pa.Table.from_pandas(entity_frame(20))
    )
    raw = flight.FlightClient(partitioning_server.location)
    try:
        command_id = raw_stage(raw, request)
        options = flight.FlightCallOptions(headers=[(PARTITIONS_HEADER.encode(), b"many")])
        with pytest.raises(flight.FlightServerError, match="positive number"):
            raw.get_flight_info(protocol.command_descriptor(command_id), options)
    finally:
        raw.close()
    assert len(partitioning_server.staging) == 0  # the failed call dropped the command


class _PartsServer(flight.FlightServerBase):
    """Serves a fixed table per ticket: partitions whose schemas differ as
    Feast's stores type them from values (an int column with a miss is float)."""

    def __init__(self, parts: dict[bytes, pa.Table]):
        super().__init__("grpc://127.0.0.1:0")
        self._parts = parts

    def do_get(self, context, ticket):
        return flight.RecordBatchStream(self._parts[ticket.ticket])


def test_partitions_typed_differently_are_read_in_one_schema():
    parts = {
        b"0": pa.table({"id": [1, 2], "trips": pa.array([5, 6], pa.int64()), "name": ["a", "b"]}),
        b"1": pa.table({"id": [3], "trips": pa.array([None], pa.float64()), "name": [None]}),
    }
    with _PartsServer(parts) as server:
        client = flight.FlightClient(f"grpc://127.0.0.1:{server.port}")
        streams = [partial(client.do_get, flight.Ticket(t)) for t in parts]
        for ordered in (True, False):
            reader = PartitionedReader(streams, ordered=ordered)
            table = reader.read_all()
            assert table.schema.field("trips").type == pa.float64()
            assert table.schema.field("name").type == pa.string()
            assert sorted(table.column("id").to_pylist()) == [1, 2, 3]
            if ordered:
                assert table.column("id").to_pylist() == [1, 2, 3]
        client.close()
