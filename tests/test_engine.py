"""flightlab's engine as a server runs it: streamed, side by side, within limits.

The answers themselves are checked against Feast's duckdb store in
``test_engine_differential.py``; here, on the sample repo, the engine's
behaviour as a service: the first batch leaves before the join has produced
the last, a small request is answered while a large one is in flight, a join
over its memory limit spills and still gives the local answer, the ASOF plan
is the sort-merge one, and who answered is reported. The engine's own
figures (rows read from DuckDB, databases open) show that a result streams
and that the server holds a bounded part of it. An on-demand view that
fails gets a named error and frees its database. A repo on the dask
(``file``) store is answered by the engine only when asked for by name.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from feast import FeatureStore, FeatureView, Field, FileSource
from feast.on_demand_feature_view import OnDemandFeatureView, on_demand_feature_view
from feast.types import Float64, String
from offline_helpers import (
    FEATURES,
    assert_same_rows,
    make_client_store,
    registry_of,
    wait_until,
    watching_spill,
)

from flightlab.client.entities import ENTITY_SLICE_ROWS, entity_rows_reader, entity_schema_of
from flightlab.client.transport import OfflineFlightClient
from flightlab.dispatch.planning import plan_historical
from flightlab.engine import Engine, EngineMode, EngineSettings, EngineUsage, OnDemandFeatureError
from flightlab.engine.on_demand import with_on_demand_features
from flightlab.engine.settings import size_in_bytes
from flightlab.errors import MalformedEntityDataError, ResourceExhaustedError
from flightlab.server import OfflineServer
from flightlab.server.limits import ServerLimits
from flightlab.testing.sample_repo import FEATURE_STORE_YAML, create_sample_repo, entity_frame
from flightlab.wire import protocol

BATCH_ROWS = 2048
LARGE = 400_000  # entity rows: ~200 result batches, more than gRPC buffers hold
# Rows a streamed result's server side may hold beyond what its client has
# received: DuckDB's batch being cut (65,536 rows) and the buffers after it.
AHEAD_ROWS = 3 * 65_536
KEYS = ["driver_id", "customer_id", "event_timestamp"]


def historical(rows: int, seed: int = 3) -> protocol.GetHistoricalFeatures:
    entity_df = pa.Table.from_pandas(entity_frame(rows, seed=seed), preserve_index=False)
    return protocol.GetHistoricalFeatures(features=tuple(FEATURES), entity_df=entity_df)


def local_answer(store: FeatureStore, rows: int, seed: int = 3):
    return store.get_historical_features(
        entity_df=entity_frame(rows, seed=seed), features=list(FEATURES)
    ).to_df()


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return create_sample_repo(tmp_path_factory.mktemp("engine").resolve() / "server")


@pytest.fixture(scope="module")
def local(repo) -> FeatureStore:
    return FeatureStore(repo_path=str(repo))


@pytest.fixture(scope="module")
def server(repo) -> Iterator[OfflineServer]:
    limits = ServerLimits(batch_rows=BATCH_ROWS)
    with OfflineServer(repo, port=0, limits=limits) as server:
        yield server


def running_joins(server: OfflineServer) -> int:
    return server.stats_json()["workers"]["running"]


def engine_usage(server: OfflineServer) -> EngineUsage:
    return server.dispatcher.engine.usage()


def test_the_first_batch_arrives_while_the_join_is_still_producing(server):
    before = engine_usage(server).rows_read
    with OfflineFlightClient(server.location) as client:
        batches = client.iter_batches(historical(LARGE))
        first = next(batches)
        # Only a stream gives this: while the client holds its first batch,
        # the engine has not yet taken the whole result from DuckDB.
        read_by_then = engine_usage(server).rows_read - before
        rest = list(batches)
    assert 0 < first.num_rows <= BATCH_ROWS
    assert first.num_rows <= read_by_then < LARGE
    assert len(rest) >= LARGE // BATCH_ROWS - 1
    assert first.num_rows + sum(b.num_rows for b in rest) == LARGE
    assert engine_usage(server).rows_read - before == LARGE
    assert wait_until(lambda: engine_usage(server).open_databases == 0)


def test_the_server_holds_a_bounded_part_of_a_large_result(server):
    """A result ~200 times the batch bound: whenever the client has received
    a batch, the engine has read from DuckDB at most AHEAD_ROWS rows more
    (the DuckDB batch being cut, the hand-over queue, gRPC's buffers)."""
    before = engine_usage(server).rows_read
    received, ahead = 0, []
    with OfflineFlightClient(server.location) as client:
        for batch in client.iter_batches(historical(LARGE)):
            received += batch.num_rows
            ahead.append(engine_usage(server).rows_read - before - received)
    assert received == LARGE
    assert max(ahead) <= AHEAD_ROWS, max(ahead)


def test_a_small_request_is_answered_while_a_large_one_streams(server, local):
    expected_small = local_answer(local, 40, seed=9)
    with (
        OfflineFlightClient(server.location) as large,
        OfflineFlightClient(server.location) as small,
    ):
        large_batches = large.iter_batches(historical(LARGE))
        next(large_batches)  # the large join is in flight, its client reading slowly
        answered = small.fetch(historical(40, seed=9)).to_pandas()
        assert running_joins(server) == 1  # the large one has not finished
        remaining = sum(b.num_rows for b in large_batches)
    assert remaining > 0
    assert_same_rows(expected_small, answered, KEYS)


def test_many_requests_side_by_side_each_get_the_local_answer(server, local):
    expected = {seed: local_answer(local, 300, seed=seed) for seed in range(4)}
    answers: dict[int, object] = {}

    def fetch(seed: int) -> None:
        with OfflineFlightClient(server.location) as client:
            answers[seed] = client.fetch(historical(300, seed=seed)).to_pandas()

    threads = [threading.Thread(target=fetch, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for seed, frame in expected.items():
        assert_same_rows(frame, answers[seed], KEYS)


def test_joins_over_their_memory_limit_spill_side_by_side_and_give_the_local_answer(
    repo, local, tmp_path
):
    spill = tmp_path / "spill"
    tight = EngineSettings(threads=1, memory_limit="16MB", spill_dir=spill)
    rows, seeds = 150_000, (4, 5)
    answers: dict[int, object] = {}

    def fetch(seed: int) -> None:
        with OfflineFlightClient(server.location) as client:
            answers[seed] = client.fetch(historical(rows, seed=seed)).to_pandas()

    with OfflineServer(repo, port=0, engine=tight) as server, watching_spill(spill) as spilled:
        fetches = [threading.Thread(target=fetch, args=(seed,)) for seed in seeds]
        for thread in fetches:
            thread.start()
        for thread in fetches:
            thread.join(300)
    for seed in seeds:
        assert_same_rows(local_answer(local, rows, seed=seed), answers[seed], KEYS)
    # Both joins spilled, each into a folder of its own, removed when it ended.
    assert len(spilled) == len(seeds)
    assert not spill.exists() or not any(spill.iterdir())


def test_a_join_that_cannot_fit_its_memory_limit_gets_a_resource_error_naming_it(repo, tmp_path):
    # 8 MB is less than even a spilling join of the sample repo needs.
    starved = EngineSettings(threads=1, memory_limit="8MB", spill_dir=tmp_path / "spill")
    with OfflineServer(repo, port=0, engine=starved) as server:
        with OfflineFlightClient(server.location) as client:
            with pytest.raises(ResourceExhaustedError, match="8MB.*--engine-memory-limit"):
                client.fetch(historical(40_000))
            assert client.fetch(historical(5)).num_rows == 5  # still serving
        assert wait_until(lambda: engine_usage(server).open_databases == 0)


def test_a_server_without_a_memory_limit_shares_the_machine_s_among_its_workers(repo):
    share = 0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limits = {}
    for workers in (1, 4):
        server = OfflineServer(repo, port=0, limits=ServerLimits(workers=workers))
        limits[workers] = size_in_bytes(server.engine_settings.memory_limit)
    assert 0 < limits[1] <= share  # a container's cgroup may cap it lower
    assert abs(limits[4] * 4 - limits[1]) <= 4 * 10**6  # in MB
    given = OfflineServer(repo, port=0, engine=EngineSettings(memory_limit="2GB"))
    assert given.engine_settings.memory_limit == "2GB"


def test_a_memory_limit_duckdb_cannot_read_is_refused_when_the_engine_is_set_up():
    with pytest.raises(ValueError, match="memory_limit.*lots"):
        Engine(EngineSettings(memory_limit="lots"))


def test_the_asof_join_is_planned_as_a_sort_merge_not_a_nested_loop(local):
    plan = plan_historical(local, tuple(FEATURES))
    rows = pa.Table.from_pandas(entity_frame(100_000), preserve_index=False)
    text = Engine().explain_historical(local.config, plan.feature_views, plan.feature_refs, rows)
    assert "ASOF_JOIN" in text
    assert "NESTED_LOOP_JOIN" not in text


def test_stats_and_the_log_name_the_engine_that_answered(server, caplog):
    before = server.stats_json()["requests_by_engine"].get("flightlab", 0)
    with caplog.at_level("INFO", logger="flightlab.server"):
        with OfflineFlightClient(server.location) as client:
            client.fetch(historical(10))
    assert server.stats_json()["requests_by_engine"]["flightlab"] == before + 1
    assert any("engine=flightlab" in r.getMessage() for r in caplog.records)


def test_entity_rows_without_a_join_key_get_a_named_error(server):
    rows = entity_frame(5).drop(columns=["customer_id"])
    request = protocol.GetHistoricalFeatures(
        features=tuple(FEATURES), entity_df=pa.Table.from_pandas(rows, preserve_index=False)
    )
    with OfflineFlightClient(server.location) as client:
        with pytest.raises(MalformedEntityDataError, match="customer_id"):
            client.fetch(request)
        assert client.fetch(historical(5)).num_rows == 5  # still serving


# --- on-demand views -----------------------------------------------------------------


def test_an_on_demand_view_that_raises_gets_a_named_error_and_frees_its_database(server, local):
    @on_demand_feature_view(
        name="broken_transform",
        sources=[local.get_feature_view("driver_stats")],
        schema=[Field(name="broken", dtype=Float64)],
    )
    def broken_transform(inputs: pd.DataFrame) -> pd.DataFrame:
        if "event_timestamp" in inputs.columns:  # a retrieval, not Feast's check at apply
            raise ZeroDivisionError("the transformation divides by zero")
        return pd.DataFrame({"broken": inputs["conv_rate"].astype("float64")})

    local.apply([broken_transform])
    request = protocol.GetHistoricalFeatures(
        features=("driver_stats:conv_rate", "broken_transform:broken"),
        entity_df=historical(50).entity_df,
    )
    with OfflineFlightClient(server.location) as client:
        with pytest.raises(
            OnDemandFeatureError, match="'broken_transform'.*ZeroDivisionError.*divides by zero"
        ):
            client.fetch(request)
        # Its database was closed as the error left, and the server serves on.
        assert engine_usage(server).open_databases == 0
        assert client.fetch(historical(5)).num_rows == 5


def shouting_view() -> OnDemandFeatureView:
    """Upper-cases a string feature: all nulls in, a column pandas gives no type."""
    source = FeatureView(
        name="words",
        entities=[],
        schema=[Field(name="word", dtype=String)],
        source=FileSource(name="words_source", path="words.parquet", timestamp_field="ts"),
    )

    @on_demand_feature_view(sources=[source], schema=[Field(name="shout", dtype=String)])
    def shout(inputs: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"shout": inputs["word"].str.upper()})

    return shout


def with_shout(*batches: list[str | None]) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    """The engine's batches of words (one list each), with ``shout`` computed."""
    schema = pa.schema([("word", pa.string())])
    words = (pa.record_batch([pa.array(b, pa.string())], schema=schema) for b in batches)
    out, out_schema = with_on_demand_features(
        words, schema, [shouting_view()], ["shout:shout"], full_feature_names=False
    )
    return out_schema, list(out)


def test_an_on_demand_output_all_null_in_the_first_batch_takes_its_declared_type():
    schema, batches = with_shout([None, None], ["a", None, "b"], [None])
    assert schema.field("shout").type == pa.string()
    assert pa.Table.from_batches(batches).column("shout").to_pylist() == [
        None,
        None,
        "A",
        None,
        "B",
        None,
    ]


def test_a_single_all_null_batch_keeps_the_type_feast_gives_it():
    # One batch is the whole result: exactly what Feast's whole-table transform gives.
    schema, batches = with_shout([None, None])
    assert schema.field("shout").type == pa.null()
    assert sum(b.num_rows for b in batches) == 2


# --- the dask store --------------------------------------------------------------------


@pytest.fixture(scope="module")
def file_repo(tmp_path_factory) -> Path:
    return create_sample_repo(tmp_path_factory.mktemp("engine_file").resolve() / "server", "file")


def as_duckdb_store(repo: Path, path: Path) -> FeatureStore:
    """A repo at ``path`` on ``repo``'s registry (and so its sources), read by
    Feast's duckdb store."""
    path.mkdir()
    yaml = FEATURE_STORE_YAML.format(offline_store="duckdb")
    (path / "feature_store.yaml").write_text(
        yaml.replace("path: data/registry.db", f"path: {registry_of(repo)}")
    )
    return FeatureStore(repo_path=str(path))


@pytest.mark.parametrize("mode", [EngineMode.AUTO, EngineMode.FLIGHTLAB])
def test_on_the_dask_store_the_engine_answers_only_when_chosen(file_repo, mode, tmp_path):
    with OfflineServer(file_repo, port=0, engine=EngineSettings(mode=mode)) as server:
        client = make_client_store(tmp_path / "client", server.port, file_repo)
        got = client.get_historical_features(
            entity_df=entity_frame(200), features=list(FEATURES)
        ).to_df()
        engines = server.stats_json()["requests_by_engine"]
    if mode is EngineMode.AUTO:
        assert engines == {"feast": 1}
        expected = local_answer(FeatureStore(repo_path=str(file_repo)), 200)
    else:
        # The engine gives the duckdb store's answers on the same sources.
        assert engines == {"flightlab": 1}
        expected = local_answer(as_duckdb_store(file_repo, tmp_path / "duckdb"), 200)
    assert_same_rows(expected, got, KEYS)


def test_the_entity_schema_comes_from_the_first_slice_and_a_later_bad_row_fails_the_upload():
    frame = entity_frame(ENTITY_SLICE_ROWS + 10)
    frame["note"] = pd.Series([None] * ENTITY_SLICE_ROWS + ["late"] * 10, dtype=object)
    frame["extra"] = pd.Series(["ok"] * (ENTITY_SLICE_ROWS + 9) + [{"not": "a string"}])
    schema = entity_schema_of(frame)  # the bad row is past the first slice: not converted
    assert schema.field("note").type == pa.string()  # typed from its first present value
    with pytest.raises(MalformedEntityDataError, match=f"rows from {ENTITY_SLICE_ROWS}"):
        entity_rows_reader(frame, schema).read_all()


def test_the_client_uploads_a_large_entity_frame_in_slices(server, local, tmp_path, repo):
    client = make_client_store(tmp_path / "client", server.port, repo)
    rows = 3 * ENTITY_SLICE_ROWS + 5
    job = client.get_historical_features(entity_df=entity_frame(rows, seed=6), features=FEATURES)
    # The job holds the frame and only the schema of its Arrow form: the rows
    # are converted slice by slice while they are uploaded.
    assert job.request.entity_df.num_rows == 0
    before = server.stats_json()["rows_in"]
    got = job.to_df()
    assert server.stats_json()["rows_in"] - before == rows
    assert_same_rows(local_answer(local, rows, seed=6), got, KEYS)


def test_nanosecond_entity_timestamps_are_sent_as_microseconds_with_the_local_answer(
    server, local, tmp_path, repo
):
    # pandas' nanoseconds, some finer than a microsecond, over several slices:
    # sent floored to microseconds, so the server needs no second, cast copy of
    # the column (locally, duckdb refuses the finer ones: compared floored).
    floored = entity_frame(ENTITY_SLICE_ROWS + 7, seed=8)
    frame = floored.assign(
        event_timestamp=floored["event_timestamp"].dt.as_unit("ns")
        + pd.to_timedelta(floored.index % 1000, unit="ns")
    )
    sent = entity_rows_reader(frame, entity_schema_of(frame)).read_all()
    assert sent.schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")
    assert sent.num_rows == len(frame)
    client = make_client_store(tmp_path / "client", server.port, repo)
    got = client.get_historical_features(entity_df=frame, features=FEATURES).to_df()
    expected = local.get_historical_features(entity_df=floored, features=list(FEATURES)).to_df()
    assert_same_rows(expected, got, KEYS)
