"""flightlab's engine over PostgreSQL sources: what the generated cases do not pin.

A throwaway cluster, a repo on Feast's postgres store, a flightlab server and
both clients (flightlab's and Feast's stock ``type: remote``):

- ``entity_df`` given as SQL runs in PostgreSQL, through the engine, with the
  local store's answer (an entity query with other timestamp and key types);
- the answer's types are the postgres store's, column type by column type;
- a retrieval over a narrow window reads only the window (the reader's
  counts), and the planner chooses per request, logging its choice;
- what the engine cannot answer identically (a uuid column, a 2-D array, two
  keys whose text collides in Feast's store) is Feast's store's to answer;
- without ADBC's driver, Feast's store answers after one warning; so it does
  with ``--engine feast``;
- the ``--postgres-*`` options (and their variables) make the settings;
- the image installs the driver.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from backend_helpers import install_backends
from feast import Entity, FeatureStore, FeatureView, Field
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
    PostgreSQLSource,
)
from feast.types import Array, Float32, Float64, Int32, Int64, String
from feast.value_type import ValueType
from offline_helpers import CLIENTS, engine_answers
from postgres_engine_helpers import (
    assert_same_answer,
    engine_settings,
    load,
    served,
    sql,
    write_repo,
)

from flightlab.dispatch.planning import plan_historical
from flightlab.engine.postgres import connections
from flightlab.engine.runner import Engine
from flightlab.errors import OfflineStoreQueryError
from flightlab.testing.postgres import PostgresServer, start_postgres

T0 = datetime(2025, 1, 1, tzinfo=UTC)
DRIVER = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
BIG_ROWS, DRIVERS = 200_000, 1_000


def feature_view(name: str, table: str, fields: list[Field], **source: str) -> FeatureView:
    return FeatureView(
        name=name,
        entities=[DRIVER],
        ttl=source.pop("ttl", None),
        schema=fields,
        source=PostgreSQLSource(name=f"{name}_source", table=table, timestamp_field="ts", **source),
    )


def big_table(rng: np.random.Generator) -> pa.Table:
    """200k rows of 1,000 drivers over 2025, in event-time order."""
    seconds = np.sort(rng.integers(0, 365 * 86_400, BIG_ROWS))
    ts = pa.array([T0 + timedelta(seconds=int(s)) for s in seconds], pa.timestamp("us", "UTC"))
    return pa.table(
        {
            "driver_id": pa.array(rng.integers(0, DRIVERS, BIG_ROWS), pa.int64()),
            "ts": ts,
            "created": ts,
            "conv_rate": pa.array(rng.random(BIG_ROWS), pa.float32()),
        }
    )


def entity_rows(n: int, day: datetime, spread: timedelta, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    offsets = rng.integers(0, int(spread.total_seconds()), n)
    return pd.DataFrame(
        {
            "driver_id": rng.integers(0, DRIVERS + 20, n).astype("int64"),
            "event_timestamp": [day + timedelta(seconds=int(s)) for s in offsets],
            "request": np.arange(n, dtype="int32"),
        }
    )


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    install_backends()
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def local(pg, tmp_path_factory) -> FeatureStore:
    repo = write_repo(tmp_path_factory.mktemp("pg_engine").resolve() / "server", pg)
    load(pg, "big", big_table(np.random.default_rng(7)), index=("driver_id", "ts"))
    store = FeatureStore(repo_path=str(repo))
    conv = Field(name="conv_rate", dtype=Float32)
    store.apply(
        [
            DRIVER,
            feature_view("big_day", "big", [conv], created_timestamp_column="created",
                         ttl=timedelta(days=1)),
            feature_view("big_all", "big", [conv], created_timestamp_column="created"),
        ]
    )  # fmt: skip
    return store


@pytest.fixture(scope="module")
def server(local, tmp_path_factory) -> Iterator[tuple]:
    folder = tmp_path_factory.mktemp("pg_engine_clients").resolve()
    with served(Path(local.repo_path), folder, engine_settings()) as running:
        yield running


# --- entity_df as SQL ----------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_an_entity_query_runs_in_postgresql_through_the_engine(client, pg, local, server):
    rows = entity_rows(300, T0 + timedelta(days=200), timedelta(days=1), seed=3)
    table = pa.Table.from_pandas(rows, preserve_index=False)
    load(pg, "entity_rows", table.set_column(2, "request", table["request"].cast(pa.int16())))
    queries = [
        "SELECT * FROM entity_rows",
        # The timestamp without zone, an int4 key, a column of text.
        "SELECT driver_id::int4 AS driver_id, event_timestamp::timestamp AS event_timestamp, "
        "request, 'x'::text AS note FROM entity_rows WHERE request < 200",
    ]
    running, clients = server
    for query in queries:
        expected = local.get_historical_features(query, ["big_day:conv_rate"]).to_df()
        before = engine_answers(running)
        got = clients[client].get_historical_features(query, ["big_day:conv_rate"]).to_df()
        assert_same_answer(expected, got, query)
        assert engine_answers(running) == before + 1
        assert running.dispatcher.engine.postgres.usage().last.reason == "entity rows from SQL"


# --- the postgres store's types ------------------------------------------------------

TYPED = """
CREATE TABLE typed (
    driver_id bigint, ts timestamptz, small smallint, normal integer, big bigint, f4 real,
    f8 double precision, num numeric(10, 3), txt text, vc varchar(10), ch char(3),
    flag boolean, raw bytea, day date, naive timestamp, ints integer[], words text[],
    doubles double precision[], bigs bigint[]
);
INSERT INTO typed VALUES
    (1, '2025-03-01 10:00+00', 7, 70, 700, 0.5, 0.25, 12.345, 'a', 'bc', 'd', true,
     '\\x0102', '2025-02-28', '2025-02-28 23:00', '{1,2}', '{x,NULL}', '{1.5}', '{9}'),
    (2, '2025-03-01 10:00+00', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    (3, '2025-03-01 10:00+00', -1, -10, -100, 'NaN', '-Infinity', -0.001, '', 'é', 'xyz',
     false, '\\x', '1999-12-31', '1999-12-31 00:00:01', '{}', '{}', '{NaN}', '{}');
"""
TYPED_COLUMNS = {
    "small": Int32, "normal": Int32, "big": Int64, "f4": Float32, "f8": Float64,
    "num": Float64, "txt": String, "vc": String, "ch": String, "flag": Int64, "raw": String,
    "day": Int64, "naive": Int64, "ints": Array(Int32), "words": Array(String),
    "doubles": Array(Float64), "bigs": Array(Int64),
}  # fmt: skip


@pytest.mark.parametrize("client", CLIENTS)
def test_answers_have_the_postgres_stores_types(client, pg, local, server):
    sql(pg, "DROP TABLE IF EXISTS typed")
    for statement in TYPED.split(";"):
        if statement.strip():
            sql(pg, statement)
    fields = [Field(name=name, dtype=kind) for name, kind in TYPED_COLUMNS.items()]
    local.apply([feature_view("typed", "typed", fields)])
    entities = pd.DataFrame(
        {
            "driver_id": pd.Series([1, 2, 3, 4], dtype="int64"),
            "event_timestamp": pd.Timestamp("2025-03-02", tz="UTC"),
            "i16": pd.Series([1, 2, 3, 4], dtype="int16"),
            "f32": pd.Series([0.5, np.nan, 1.5, 2.5], dtype="float32"),
            "i32": pd.Series([1, 2, 3, 4], dtype="int32"),
            "u8": pd.Series([1, 2, 3, 4], dtype="uint8"),
            "ok": [True, False, True, False],
            "label": ["a", None, "c", "d"],
            "noted_at": pd.Timestamp("2025-03-02 12:00"),
        }
    )
    features = [f"typed:{name}" for name in TYPED_COLUMNS]
    expected = local.get_historical_features(entities, features).to_df()
    running, clients = server
    before = engine_answers(running)
    got = clients[client].get_historical_features(entities, features).to_df()
    assert_same_answer(expected, got)
    assert engine_answers(running) == before + 1


# --- reading only the window, choosing the plan ------------------------------------------


def engine_answer(engine: Engine, store: FeatureStore, rows: pd.DataFrame, ref: str) -> pa.Table:
    plan = plan_historical(store, (ref,), (), False)
    table = pa.Table.from_pandas(rows, preserve_index=False)
    result = engine.historical(
        store.config, plan.feature_views, plan.feature_refs, [], table, False
    )
    assert result is not None
    return result.read_all()


def sorted_rows(table: pa.Table) -> pa.Table:
    return table.sort_by([("request", "ascending"), ("conv_rate", "ascending")])


@pytest.mark.parametrize("plan", ["fetch", "seek"])
def test_a_narrow_window_fetches_only_the_window(plan, local):
    """Entity rows over one day, TTL one day: of the 200k-row table, plan B
    reads what two days hold (~1,100 rows), seek even less; and the answer is
    the local store's."""
    rows = entity_rows(400, T0 + timedelta(days=150), timedelta(days=1), seed=11)
    engine = Engine(engine_settings(plan))
    try:
        got = engine_answer(engine, local, rows, "big_day:conv_rate")
        usage = engine.postgres.usage()
    finally:
        engine.close()
    assert usage.plans == {plan: 1}
    assert 0 < usage.rows_fetched < 2_000, usage  # of 200,000 rows in the table
    expected = local.get_historical_features(rows, ["big_day:conv_rate"]).to_arrow()
    assert sorted_rows(got).equals(sorted_rows(expected))
    # Without a TTL, only seek keeps it narrow: the latest row of each key
    # before the window, then the window.
    engine = Engine(engine_settings(plan))
    try:
        engine_answer(engine, local, rows, "big_all:conv_rate")
        fetched = engine.postgres.usage().rows_fetched
    finally:
        engine.close()
    if plan == "seek":
        assert fetched < DRIVERS + 2_000
    else:
        assert fetched > BIG_ROWS / 4  # all of the table before the latest entity row


def test_the_planner_chooses_per_request_and_logs_its_choice(local, caplog):
    """Few entity rows over the year: the join runs in PostgreSQL (plan A);
    100k entity rows in one day: the window is fetched (seek). Each choice is
    logged, and the answers are plan A's, forced."""
    caplog.set_level(logging.INFO, logger="flightlab.engine.postgres")
    few = entity_rows(200, T0, timedelta(days=365), seed=1)
    many = entity_rows(100_000, T0 + timedelta(days=180), timedelta(days=1), seed=2)
    chosen = Engine(engine_settings("auto"))
    forced = Engine(engine_settings("pit"))
    try:
        for rows, ref, plan in (
            (few, "big_all:conv_rate", "pit"),
            (many, "big_all:conv_rate", "seek"),
        ):
            caplog.clear()
            got = engine_answer(chosen, local, rows, ref)
            last = chosen.postgres.usage().last
            assert last.plan == plan, last
            assert last.reason == "estimated" and set(last.estimates) == {"pit", "fetch", "seek"}
            assert f"plan={plan} (estimated" in caplog.text
            assert sorted_rows(got).equals(sorted_rows(engine_answer(forced, local, rows, ref)))
    finally:
        chosen.close()
        forced.close()


# --- what Feast's store answers ----------------------------------------------------------


def feast_answers(running, client_store, local, entities, features) -> None:
    """The request fails or succeeds as locally, and Feast's store answered it."""
    engine_before = engine_answers(running)
    plans_before = running.dispatcher.engine.postgres.usage().plans
    feast_before = running.stats_json()["requests_by_engine"].get("feast", 0)
    try:
        expected = local.get_historical_features(entities, features).to_df()
    except Exception:
        with pytest.raises(Exception):  # noqa: B017 - whatever Feast's store raises locally
            client_store.get_historical_features(entities, features).to_df()
    else:
        got = client_store.get_historical_features(entities, features).to_df()
        assert_same_answer(expected, got)
        assert running.stats_json()["requests_by_engine"]["feast"] == feast_before + 1
    assert engine_answers(running) == engine_before
    assert running.dispatcher.engine.postgres.usage().plans == plans_before


def test_what_the_engine_cannot_answer_identically_goes_to_feasts_store(pg, local, server):
    running, clients = server
    sql(pg, "DROP TABLE IF EXISTS odd")
    sql(
        pg,
        "CREATE TABLE odd (driver_id bigint, ts timestamptz, id uuid, grid real[][], fine real)",
    )
    sql(
        pg,
        "INSERT INTO odd VALUES (1, '2025-01-01', '0b7f6a4e-0000-4000-8000-000000000001', "
        "'{{1,2},{3,4}}', 2.5)",
    )
    fields = [Field(name="id", dtype=String), Field(name="grid", dtype=Array(Float32))]
    local.apply([feature_view("odd", "odd", [*fields, Field(name="fine", dtype=Float32)])])
    entities = pd.DataFrame(
        {"driver_id": [1], "event_timestamp": [pd.Timestamp("2025-02-01", tz="UTC")]}
    )
    for client in CLIENTS:
        feast_answers(running, clients[client], local, entities, ["odd:id"])  # uuid
        feast_answers(running, clients[client], local, entities, ["odd:grid"])  # real[][]
    # Two join keys whose text collides in Feast's store: (1, "23") and (12, "3").
    load(
        pg,
        "pairs",
        pa.table(
            {
                "a": pa.array([1, 12], pa.int64()),
                "b": pa.array(["23", "3"]),
                "ts": pa.array([T0, T0], pa.timestamp("us", "UTC")),
                "v": pa.array([100, 200], pa.int64()),
            }
        ),
    )
    sides = [
        Entity(name="side_a", join_keys=["a"], value_type=ValueType.INT64),
        Entity(name="side_b", join_keys=["b"], value_type=ValueType.STRING),
    ]
    pairs = FeatureView(
        name="pairs",
        entities=sides,
        schema=[Field(name="v", dtype=Int64)],
        source=PostgreSQLSource(name="pairs_source", table="pairs", timestamp_field="ts"),
    )
    local.apply([*sides, pairs])
    entities = pd.DataFrame(
        {"a": [1, 12], "b": ["23", "3"], "event_timestamp": [T0 + timedelta(hours=1)] * 2}
    )
    assert len(local.get_historical_features(entities, ["pairs:v"]).to_df()) == 4  # Feast's bug
    for client in CLIENTS:
        feast_answers(running, clients[client], local, entities, ["pairs:v"])


def test_without_the_driver_feasts_store_answers_after_one_warning(local, monkeypatch, caplog):
    found = importlib.util.find_spec

    def no_driver(name, *args, **kwargs):
        return None if name == connections.DRIVER else found(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", no_driver)
    monkeypatch.setattr(connections, "_warned_missing", threading.Event())
    caplog.set_level(logging.WARNING, logger="flightlab.engine.postgres")
    engine = Engine(engine_settings())
    rows = entity_rows(10, T0 + timedelta(days=3), timedelta(days=1), seed=5)
    plan = plan_historical(local, ("big_day:conv_rate",), (), False)
    table = pa.Table.from_pandas(rows, preserve_index=False)
    for _ in range(2):
        assert engine.historical(local.config, plan.feature_views, plan.feature_refs, [], table,
                                 False) is None  # fmt: skip
    warnings = [r for r in caplog.records if "adbc-driver-postgresql" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_the_image_installs_the_engines_driver():
    from test_deploy import image_requirements, installed_distributions

    installed = installed_distributions(image_requirements())
    assert {"adbc-driver-postgresql", "adbc-driver-manager", "psycopg"} <= installed
    assert "pyspark" not in installed


@pytest.mark.parametrize("client", CLIENTS)
def test_an_array_of_two_dimensions_is_refused_as_feasts_store_refuses_it(
    client, pg, local, server
):
    """An array column declared without dimensions (a query source) may hold
    a 2-D array, which ADBC would hand over flattened: the engine's query
    checks, and the request fails as Feast's store fails on it, naming it."""
    running, clients = server
    sql(pg, "DROP TABLE IF EXISTS grids")
    sql(pg, "CREATE TABLE grids AS SELECT 1::bigint AS driver_id, "
            "'2025-01-01'::timestamptz AS ts, '{{1,2},{3,4}}'::real[] AS grid")  # fmt: skip
    view = FeatureView(
        name="grids",
        entities=[DRIVER],
        schema=[Field(name="grid", dtype=Array(Float32))],
        source=PostgreSQLSource(name="grids_source", query="SELECT * FROM grids",
                                timestamp_field="ts"),
    )  # fmt: skip
    local.apply([view])
    entities = pd.DataFrame(
        {"driver_id": [1], "event_timestamp": [pd.Timestamp("2025-02-01", tz="UTC")]}
    )
    with pytest.raises(pa.ArrowNotImplementedError):
        local.get_historical_features(entities, ["grids:grid"]).to_df()
    with pytest.raises(OfflineStoreQueryError) as refused:
        clients[client].get_historical_features(entities, ["grids:grid"]).to_df()
    assert "holds arrays of 2 dimensions" in str(refused.value)
    assert "query SELECT * FROM grids" in str(refused.value)


def test_engine_feast_keeps_feasts_postgres_store(local, tmp_path):
    from flightlab.engine.settings import EngineMode, EngineSettings

    rows = entity_rows(50, T0 + timedelta(days=40), timedelta(days=2), seed=9)
    expected = local.get_historical_features(rows, ["big_day:conv_rate"]).to_df()
    settings = EngineSettings(mode=EngineMode.FEAST)
    with served(Path(local.repo_path), tmp_path, settings) as (running, clients):
        for client in CLIENTS:
            got = clients[client].get_historical_features(rows, ["big_day:conv_rate"]).to_df()
            assert_same_answer(expected, got, client)
        assert running.stats_json()["requests_by_engine"] == {"feast": len(CLIENTS)}
        assert running.dispatcher.engine.postgres.usage().pools == []  # never connected


def test_the_postgres_options_and_their_variables(tmp_path):
    from flightlab.cli import build_parser
    from flightlab.cli_engine import engine_settings
    from flightlab.engine.postgres.settings import PlanCosts, PostgresSettings

    args = build_parser({"FLIGHTLAB_POSTGRES_PLAN": "seek"}).parse_args(
        ["serve_offline", "--postgres-pool-size", "2", "--postgres-statement-timeout", "1.5",
         "--postgres-plan-costs", "probe_s=4e-6, fetch_fixed_s=0.2",
         "--postgres-application-name", "features"]
    )  # fmt: skip
    assert engine_settings(args).postgres == PostgresSettings(
        pool_size=2,
        statement_timeout=1.5,
        plan="seek",
        costs=PlanCosts(probe_s=4e-6, fetch_fixed_s=0.2),
        application_name="features",
    )
    with pytest.raises(ValueError, match="unknown planner constant 'probe'"):
        PlanCosts.parse("probe=1")
    with pytest.raises(ValueError, match="pool size must be at least 1"):
        PostgresSettings(pool_size=0)
