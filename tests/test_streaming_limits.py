"""Streaming and limits of a real flightlab server: bounded batches both ways,
progress, compression, the worker pool's queue, staged-command expiry and the
staging cap, and what cancelled or timed-out calls leave behind.

Four real servers on one real sample repo (built with ``feast apply``), each
with the limits its tests need:

- *server*: small result batches (``batch_rows=64``, ``max_batch_bytes=2048``);
- *busy_server*: one worker and a 0.5 s queue timeout;
- *capped_server*: at most 20 kB staged;
- *ttl_server*: staged commands expire after 0.5 s.

The parts as objects: ``test_worker_pool.py``, ``test_staging.py`` and
``test_batch_bounds.py``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from feast import FeatureStore
from offline_helpers import capture, raw_stage, wait_until

from flightlab.client.errors import exception_for_flight_error
from flightlab.client.transport import OfflineFlightClient, Progress
from flightlab.engine import EngineMode, EngineSettings
from flightlab.errors import (
    ResourceExhaustedError,
    ServerBusyError,
    UnknownCommandError,
)
from flightlab.server import OfflineServer
from flightlab.server.limits import ServerLimits
from flightlab.server.ownership import owner_key
from flightlab.testing.sample_repo import client_repo_yaml, create_sample_repo, entity_frame
from flightlab.wire import protocol
from flightlab.wire.actions import ACTION_DROP, ACTION_STATS
from flightlab.wire.headers import COMPRESSION_HEADER, OWNER_HEADER

FEATURES = ("driver_stats:conv_rate", "driver_stats:acc_rate", "customer_stats:avg_rating")
BATCH_ROWS = 64
MAX_BATCH_BYTES = 2048
QUEUE_TIMEOUT = 0.5
MAX_STAGED_BYTES = 20_000
STAGED_TTL = 0.5
# Rows of the join that keeps busy_server's only worker occupied: several
# seconds of real work, far longer than the queue waits it must outlast.
BLOCKER_ROWS = 120_000


# --- helpers ---------------------------------------------------------------------


def historical(rows: int, seed: int = 3, features: tuple[str, ...] = FEATURES):
    entity_df = pa.Table.from_pandas(entity_frame(rows, seed=seed), preserve_index=False)
    return protocol.GetHistoricalFeatures(features=features, entity_df=entity_df)


def pull_all_conv_rate() -> protocol.PullAllFromTableOrQuery:
    return protocol.PullAllFromTableOrQuery(
        data_source_name="driver_stats_source",
        join_key_columns=("driver_id",),
        feature_name_columns=("conv_rate",),
        timestamp_field="event_timestamp",
    )


def canonical(table: pa.Table) -> pa.Table:
    """The rows in a fixed order: the server's join does not promise one."""
    return table.sort_by([(name, "ascending") for name in table.column_names]).combine_chunks()


def sorted_frame(frame: pd.DataFrame) -> pd.DataFrame:
    columns = sorted(frame.columns)
    return frame[columns].sort_values(columns).reset_index(drop=True)


def raw_client(server: OfflineServer) -> flight.FlightClient:
    return flight.FlightClient(server.location)


def raw_stats(raw: flight.FlightClient) -> dict[str, Any]:
    results = list(raw.do_action(flight.Action(ACTION_STATS, b"")))
    return json.loads(results[0].body.to_pybytes())


def raw_drop(raw: flight.FlightClient, command_id: str) -> dict[str, Any]:
    results = list(raw.do_action(flight.Action(ACTION_DROP, protocol.ticket_bytes(command_id))))
    return json.loads(results[0].body.to_pybytes())


def raw_fetch(raw: flight.FlightClient, command_id: str) -> pa.Table:
    info = raw.get_flight_info(protocol.command_descriptor(command_id))
    return raw.do_get(info.endpoints[0].ticket).read_all()


def detail_of(exc: flight.FlightError) -> dict[str, str]:
    return json.loads(exc.extra_info)


def idle(server: OfflineServer) -> bool:
    """No staged state and no join running or queued."""
    stats = server.stats_json()
    workers = stats["workers"]
    return (
        stats["staged_commands"] == 0
        and stats["staged_bytes"] == 0
        and workers["running"] == 0
        and workers["queued"] == 0
    )


def remote_store(
    directory: Path, server: OfflineServer, repo: Path, **options: str
) -> FeatureStore:
    """A client repo whose offline store is ``server`` (flightlab's client)."""
    yaml = client_repo_yaml("127.0.0.1", server.port, registry=repo / "data" / "registry.db")
    port_line = f"  port: {server.port}\n"
    extra = "".join(f"  {key}: {value}\n" for key, value in options.items())
    (directory / "feature_store.yaml").write_text(yaml.replace(port_line, port_line + extra))
    return FeatureStore(repo_path=str(directory))


# --- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_repo(tmp_path_factory) -> Path:
    return create_sample_repo(tmp_path_factory.mktemp("streaming_limits").resolve() / "server")


def _serve(
    repo: Path, engine: EngineSettings | None = None, **limits: Any
) -> Iterator[OfflineServer]:
    with OfflineServer(repo, port=0, limits=ServerLimits(**limits), engine=engine) as server:
        yield server


@pytest.fixture(scope="module")
def server(sample_repo) -> Iterator[OfflineServer]:
    yield from _serve(sample_repo, batch_rows=BATCH_ROWS, max_batch_bytes=MAX_BATCH_BYTES)


@pytest.fixture(scope="module")
def busy_server(sample_repo) -> Iterator[OfflineServer]:
    # Feast's store, which is slow enough that one 120k-row join holds the
    # only worker while the test queues others behind it; flightlab's engine
    # answers the same join before the queue could be observed.
    feast_store = EngineSettings(mode=EngineMode.FEAST)
    yield from _serve(sample_repo, feast_store, workers=1, queue_timeout=QUEUE_TIMEOUT)


@pytest.fixture(scope="module")
def capped_server(sample_repo) -> Iterator[OfflineServer]:
    yield from _serve(sample_repo, max_staged_bytes=MAX_STAGED_BYTES)


@pytest.fixture(scope="module")
def ttl_server(sample_repo) -> Iterator[OfflineServer]:
    yield from _serve(sample_repo, staged_ttl=STAGED_TTL)


@pytest.fixture(scope="module")
def client(server) -> Iterator[OfflineFlightClient]:
    with OfflineFlightClient(server.location) as client:
        yield client


@pytest.fixture(scope="module")
def remote(server, sample_repo, tmp_path_factory) -> FeatureStore:
    return remote_store(tmp_path_factory.mktemp("streaming_client"), server, sample_repo)


@pytest.fixture(scope="module")
def reference(client) -> pa.Table:
    """historical(2000) fetched plainly: what every other path must return."""
    table = canonical(client.fetch(historical(2000)))
    assert table.num_rows == 2000
    return table


# --- bounded result batches, iteration and progress ----------------------------------


def test_result_batches_stay_within_the_row_and_byte_bounds(server, client):
    # 44-byte rows: the byte bound binds; 20-byte rows: the row bound binds.
    for request, rows in ((historical(2000), 2000), (pull_all_conv_rate(), 1200)):
        batches = list(client.iter_batches(request))
        assert sum(b.num_rows for b in batches) == rows
        assert len(batches) >= rows // BATCH_ROWS
        for batch in batches:
            assert 0 < batch.num_rows <= BATCH_ROWS
            assert batch.nbytes <= MAX_BATCH_BYTES


def test_to_arrow_batches_returns_the_rows_of_to_df(server, remote):
    job = remote.get_historical_features(entity_df=entity_frame(1000), features=list(FEATURES))
    batches = list(job.to_arrow_batches())
    assert len(batches) > 1
    assert all(b.num_rows <= BATCH_ROWS and b.nbytes <= MAX_BATCH_BYTES for b in batches)
    iterated = pa.Table.from_batches(batches).to_pandas()
    frame = job.to_df()
    assert len(frame) == len(iterated) == 1000
    pd.testing.assert_frame_equal(sorted_frame(iterated), sorted_frame(frame))


def test_progress_callback_sums_to_the_total(server, remote):
    job = remote.get_historical_features(entity_df=entity_frame(1000), features=list(FEATURES))
    seen: list[Progress] = []
    table = job.to_arrow_with_progress(seen.append)
    assert table.num_rows == 1000
    assert len(seen) > 1
    assert [s.batches for s in seen] == list(range(1, len(seen) + 1))
    # flightlab's engine streams the join as DuckDB makes it: the row total is
    # known up front (one row per entity row), the byte total is not.
    assert all(s.total_rows == 1000 and s.total_bytes is None for s in seen)
    steps = [b.rows - a.rows for a, b in zip([Progress(0, 0, 0), *seen], seen, strict=False)]
    assert all(0 < step <= BATCH_ROWS for step in steps)
    assert seen[-1].rows == seen[-1].total_rows == table.num_rows
    assert seen[-1].fraction == 1.0
    assert seen[-1].bytes == table.nbytes
    assert canonical(table).equals(canonical(job.to_arrow()))


# --- compression -------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
def test_compressed_results_equal_uncompressed(server, reference, compression):
    with OfflineFlightClient(server.location, compression=compression) as compressed:
        assert canonical(compressed.fetch(historical(2000))).equals(reference)
        batches = list(compressed.iter_batches(historical(2000)))
    assert len(batches) > 1
    assert canonical(pa.Table.from_batches(batches)).equals(reference)


def test_compression_in_the_client_config_gives_the_same_frame(
    server, sample_repo, remote, tmp_path_factory
):
    compressed = remote_store(
        tmp_path_factory.mktemp("zstd_client"), server, sample_repo, compression="zstd"
    )
    assert compressed.config.offline_store.compression == "zstd"
    entities = entity_frame(500)
    plain = remote.get_historical_features(entity_df=entities, features=list(FEATURES)).to_df()
    zstd = compressed.get_historical_features(entity_df=entities, features=list(FEATURES)).to_df()
    pd.testing.assert_frame_equal(sorted_frame(zstd), sorted_frame(plain))


def test_unknown_compression_is_refused_with_a_clear_error(server):
    raw = raw_client(server)
    command_id = raw_stage(raw, historical(20))
    options = flight.FlightCallOptions(headers=[(COMPRESSION_HEADER.encode(), b"gzip")])
    info = raw.get_flight_info(protocol.command_descriptor(command_id))
    with pytest.raises(flight.FlightServerError) as caught:
        raw.do_get(info.endpoints[0].ticket, options).read_all()
    detail = detail_of(caught.value)
    assert detail["class"] == "ProtocolError"
    assert "gzip" in detail["message"]
    assert wait_until(lambda: idle(server))


# --- chunked uploads -----------------------------------------------------------------


def test_a_large_upload_arrives_in_bounded_batches(server):
    request = historical(2000)
    sent = protocol.encode_request(request)["entity_df"]
    for bounds, check in (
        ({"upload_batch_bytes": 4096}, lambda b: b.nbytes <= 4096),
        ({"upload_batch_rows": 100}, lambda b: b.num_rows <= 100),
    ):
        with OfflineFlightClient(server.location, owner="uploader", **bounds) as uploader:
            command_id = uploader.stage(request)
            try:
                # What the server's do_put read: one chunk per batch received.
                owner = owner_key(None, {OWNER_HEADER: ["uploader"]}, "")
                staged = server.staging.peek(command_id, owner).params["entity_df"]
                batches = [b for b in staged.to_batches() if b.num_rows]
                assert len(batches) >= 16
                assert all(check(b) for b in batches)
                assert staged.equals(sent)
            finally:
                # Only its owner may drop it (another client is told "not dropped").
                assert raw_drop(raw_client(server), command_id) == {"dropped": False}
                assert uploader.drop(command_id)
    assert idle(server)


def test_a_chunked_upload_gives_the_same_answer(server, reference):
    with OfflineFlightClient(server.location, upload_batch_bytes=1024) as uploader:
        assert canonical(uploader.fetch(historical(2000))).equals(reference)


# --- the stats action ------------------------------------------------------------------


def test_stats_action_reports_staging_requests_and_errors(server, client):
    raw = raw_client(server)
    api = protocol.GetHistoricalFeatures.api
    before = raw_stats(raw)
    assert before["workers"] == {"workers": 4, "running": 0, "queued": 0}

    request = historical(500)
    command_id = client.stage(request)
    staged = raw_stats(raw)
    assert staged["staged_commands"] == before["staged_commands"] + 1
    added = staged["staged_bytes"] - before["staged_bytes"]
    [summary] = [s for s in server.staging.summaries(everyone=True) if s.command_id == command_id]
    assert added == summary.nbytes
    assert added >= request.entity_df.nbytes
    assert client.drop(command_id)
    assert raw_stats(raw)["staged_bytes"] == before["staged_bytes"]

    assert client.fetch(request).num_rows == 500
    served = raw_stats(raw)
    assert served["requests_by_api"][api] == before["requests_by_api"].get(api, 0) + 1
    assert served["errors_by_api"].get(api, 0) == before["errors_by_api"].get(api, 0)
    assert served["rows_in"] - before["rows_in"] == 500
    assert served["rows_out"] - before["rows_out"] == 500

    with pytest.raises(Exception, match="no_such_view"):
        client.fetch(historical(20, features=("no_such_view:x",)))
    failed = raw_stats(raw)
    assert failed["requests_by_api"][api] == served["requests_by_api"][api] + 1
    assert failed["errors_by_api"][api] == served["errors_by_api"].get(api, 0) + 1
    assert failed["last_error"]["api"] == api
    assert "no_such_view" in failed["last_error"]["message"]
    assert failed["staged_commands"] == before["staged_commands"]


# --- cancelled and timed-out calls ---------------------------------------------------------


def test_closing_to_arrow_batches_early_leaves_the_server_serving(server, remote, reference):
    job = remote.get_historical_features(entity_df=entity_frame(2000), features=list(FEATURES))
    batches = job.to_arrow_batches()
    first = next(batches)
    assert 0 < first.num_rows <= BATCH_ROWS
    batches.close()
    assert wait_until(lambda: idle(server))
    with OfflineFlightClient(server.location) as again:
        assert canonical(again.fetch(historical(2000))).equals(reference)


def test_a_raw_reader_cancelled_mid_stream_leaves_no_state(server, reference):
    raw = raw_client(server)
    reader = raw.do_get(
        raw.get_flight_info(protocol.command_descriptor(raw_stage(raw, historical(2000))))
        .endpoints[0]
        .ticket
    )
    assert reader.read_chunk().data.num_rows > 0
    reader.cancel()
    assert wait_until(lambda: idle(server))
    assert canonical(raw_fetch(raw, raw_stage(raw, historical(2000)))).equals(reference)


def test_a_call_timing_out_mid_stream_leaves_no_state(server, reference):
    with OfflineFlightClient(server.location, timeout=2.0) as impatient:
        with pytest.raises(flight.FlightTimedOutError):
            for index, _batch in enumerate(impatient.iter_batches(historical(2000))):
                if index == 0:
                    time.sleep(2.5)  # the call's deadline passes while it streams
    assert wait_until(lambda: idle(server))
    with OfflineFlightClient(server.location) as again:
        assert canonical(again.fetch(historical(2000))).equals(reference)


def test_queue_overflow_and_a_call_timing_out_in_the_queue(busy_server):
    """One slow real join holds the only worker; meanwhile a request waits out
    the queue timeout (busy, raw and through the client), and one whose
    deadline passes in the queue is dropped as gone, not reported busy."""
    raw = raw_client(busy_server)
    small = historical(20)
    blocker: dict[str, Any] = {}

    def run_blocker() -> None:
        with OfflineFlightClient(busy_server.location) as slow:
            blocker["result"] = capture(lambda: slow.fetch(historical(BLOCKER_ROWS, seed=5)))

    thread = threading.Thread(target=run_blocker)
    thread.start()
    try:
        assert wait_until(lambda: busy_server.stats_json()["workers"]["running"] == 1, 60)
        staged_for_raw = raw_stage(raw, small)
        with ThreadPoolExecutor(2) as executor:
            through_client = executor.submit(
                capture, lambda: OfflineFlightClient(busy_server.location).fetch(small)
            )
            through_raw = executor.submit(capture, lambda: raw_fetch(raw, staged_for_raw))
            busy_client, busy_raw = through_client.result(), through_raw.result()
        errors_before = raw_stats(raw)["errors_by_api"]["get_historical_features"]
        timed_out = capture(
            lambda: OfflineFlightClient(busy_server.location, timeout=0.2).fetch(small)
        )
        assert wait_until(
            lambda: raw_stats(raw)["errors_by_api"]["get_historical_features"] > errors_before
        )
        stats = raw_stats(raw)
        blocker_was_still_running = stats["workers"]["running"] == 1
    finally:
        thread.join(120)

    assert blocker_was_still_running, "the blocking join ended too soon to test the queue"
    assert isinstance(busy_client, ServerBusyError), busy_client
    assert "busy" in str(busy_client)
    assert isinstance(busy_raw, flight.FlightUnavailableError), busy_raw
    assert detail_of(busy_raw)["class"] == "ServerBusyError"
    assert detail_of(busy_raw)["status"] == "unavailable"
    assert isinstance(timed_out, flight.FlightTimedOutError), timed_out
    # The server noticed the deadline while the call was queued (well before
    # its 0.5 s queue timeout), so it was dropped as gone rather than "busy".
    assert stats["last_error"]["class"] == "ClientGoneError"
    assert "queued" in stats["last_error"]["message"]

    assert isinstance(blocker["result"], pa.Table), blocker["result"]
    assert blocker["result"].num_rows == BLOCKER_ROWS
    assert wait_until(lambda: idle(busy_server))
    assert OfflineFlightClient(busy_server.location).fetch(small).num_rows == 20


# --- the staging cap and expiry, end to end --------------------------------------------------


def test_staging_cap_on_the_wire_and_through_the_client(capped_server):
    raw = raw_client(capped_server)
    big = historical(2000)  # 64 kB of entity rows; the cap is 20 kB
    with pytest.raises(flight.FlightUnavailableError) as caught:
        raw_stage(raw, big)
    detail = detail_of(caught.value)
    assert detail["class"] == "ResourceExhaustedError"
    assert detail["module"] == "flightlab.wire.flight_errors"
    assert detail["status"] == "resource_exhausted"
    assert str(MAX_STAGED_BYTES) in detail["message"]
    # The parameters staged before the one refused are dropped with it.
    assert wait_until(lambda: idle(capped_server))

    with OfflineFlightClient(capped_server.location) as client:
        with pytest.raises(ResourceExhaustedError, match="cap"):
            client.fetch(big)
        assert idle(capped_server)
        assert client.fetch(historical(20)).num_rows == 20
    assert idle(capped_server)


def test_an_upload_over_the_cap_is_refused_before_the_client_has_sent_it(capped_server):
    # 2M entity rows (32 MB) in 1,000-row batches, against a 20 kB cap: the
    # server refuses at the batch that passes it, not once all are read.
    request = historical(20)
    rows = 2_000_000
    at = pa.array(np.full(rows, 1_700_000_000_000_000), pa.timestamp("us", "UTC"))
    entity_df = pa.table(
        {
            "driver_id": pa.array(np.arange(rows) % 5 + 1001, pa.int64()),
            "customer_id": pa.array(np.arange(rows) % 5 + 1, pa.int64()),
            "event_timestamp": at,
        }
    )
    command_id = protocol.new_command_id()
    metadata = protocol.put_metadata(command_id, request.api, "entity_df")
    raw = raw_client(capped_server)
    writer, _ = raw.do_put(
        protocol.command_descriptor(command_id), entity_df.schema.with_metadata(metadata)
    )
    batches = entity_df.replace_schema_metadata(metadata).to_batches(max_chunksize=1_000)
    sent = 0
    with pytest.raises(flight.FlightError) as caught:
        for batch in batches:
            writer.write_batch(batch)
            sent += 1
        writer.close()

    assert sent < len(batches) / 2, (sent, len(batches))
    detail = detail_of(caught.value)
    assert detail["class"] == "ResourceExhaustedError"
    assert "more bytes would exceed" in detail["message"]
    assert wait_until(lambda: idle(capped_server))


def test_the_sweeper_frees_an_abandoned_command_without_any_request(ttl_server):
    with OfflineFlightClient(ttl_server.location) as client:
        client.stage(historical(20))
    stats = ttl_server.stats_json()  # in-process: no request reaches the server
    assert stats["staged_commands"] == 1 and stats["staged_bytes"] > 0
    assert wait_until(lambda: ttl_server.stats_json()["staged_commands"] == 0)
    assert ttl_server.stats_json()["staged_bytes"] == 0
    assert ttl_server.staging.staged_bytes == 0


def test_an_expired_command_is_gone_and_its_ticket_says_so(ttl_server):
    raw = raw_client(ttl_server)
    command_id = raw_stage(raw, historical(20))
    assert wait_until(lambda: len(ttl_server.staging) == 0)

    with pytest.raises(flight.FlightServerError) as by_descriptor:
        raw.get_flight_info(protocol.command_descriptor(command_id))
    with pytest.raises(flight.FlightServerError) as by_ticket:
        raw.do_get(flight.Ticket(protocol.ticket_bytes(command_id))).read_all()
    for caught in (by_descriptor, by_ticket):
        detail = detail_of(caught.value)
        assert detail["class"] == "UnknownCommandError"
        assert detail["status"] == "not_found"
        assert "expired" in detail["message"] and command_id in detail["message"]
        on_client = exception_for_flight_error(caught.value)
        assert isinstance(on_client, UnknownCommandError)
        assert "expired" in str(on_client)

    never = protocol.new_command_id()
    with pytest.raises(flight.FlightServerError) as unknown:
        raw.get_flight_info(protocol.command_descriptor(never))
    assert "expired" not in detail_of(unknown.value)["message"]

    assert raw_fetch(raw, raw_stage(raw, historical(20))).num_rows == 20
    assert idle(ttl_server)
