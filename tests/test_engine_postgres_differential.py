"""flightlab's engine against Feast's postgres store, on generated repos in a real PostgreSQL.

The cases are the parquet differential suite's (tests/test_engine_differential.py:
its hypothesis strategies, entity frames and on-demand view), loaded into
PostgreSQL tables by binary COPY and read through ``PostgreSQLSource`` (a
table, a query, or a table whose event timestamp has no time zone). What the
postgres store does differently is in the data: rows tied on keys and event
timestamp are kept (the store answers once per tied row), created timestamps
tie and are NULL (a NULL never matches there), and each view has a ``real[]``
feature. The same retrieval is asked locally (Feast's postgres store, same
database) and through servers that each force one plan (pit, fetch, seek) or
let the planner choose, with flightlab's client and Feast's stock client; each
answer must equal the local one: rows as multisets, values, column order,
dtypes. The engine, not Feast's store, must have answered.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from backend_helpers import install_backends
from feast import FeatureService, FeatureStore, FeatureView, Field
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
    PostgreSQLSource,
)
from feast.types import Array, Float32
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from offline_helpers import CLIENTS, engine_answers, offline_store_of
from postgres_engine_helpers import (
    assert_same_answer,
    engine_settings,
    load,
    plans_used,
    served,
    write_repo,
)
from test_engine_differential import (
    K1,
    K2,
    T0,
    Case,
    ViewCase,
    a_case,
    a_view,
    case_view,
    entity_frame,
    generated_cases,
    register_case,
    source_options,
    view_cases,
)

from flightlab.testing.postgres import PostgresServer, start_postgres

PLANS = ("pit", "fetch", "seek", "auto")
_names = itertools.count()


# --- the tables and repo a case builds ---------------------------------------------------


def source_table(view: ViewCase, i: int, naive: bool) -> pa.Table:
    """The view's rows, ties kept. Created timestamps (with ``view.created``)
    repeat every four rows and are NULL every fifth, so that rows of one key
    and time tie on them too. The array feature is [f_float, f_int]."""
    rows = view.rows
    ts_type = pa.timestamp("us") if naive else pa.timestamp("us", tz="UTC")
    stamps = [T0 + timedelta(seconds=r[2]) for r in rows]
    columns = {
        "k1": pa.array([r[0] for r in rows], pa.int64()),
        "k2": pa.array([r[1] for r in rows], pa.string()),
        "ts": pa.array([s.replace(tzinfo=None) if naive else s for s in stamps], ts_type),
        f"f_int{i}": pa.array([r[3] for r in rows], pa.int64()),
        f"raw_f{i}" if view.mapped else f"f_float{i}": pa.array([r[4] for r in rows], pa.float64()),
        f"f_str{i}": pa.array([r[5] for r in rows], pa.string()),
        f"f_arr{i}": pa.array(
            [None if r[5] is None else [r[4], float(r[3] or 0)] for r in rows],
            pa.list_(pa.float32()),
        ),
    }
    if view.created:
        created = [
            None if j % 5 == 4 else T0 + timedelta(minutes=(7 * j) % 4) for j in range(len(rows))
        ]
        columns["created"] = pa.array(created, pa.timestamp("us", tz="UTC"))
    return pa.table(columns)


def pg_feature_view(pg: PostgresServer, name: str, view: ViewCase, i: int) -> FeatureView:
    """A view over a table, a query on it, or a table whose event timestamp
    is ``timestamp`` (without zone), by the case's own numbers."""
    kind = ("table", "query", "naive")[(len(view.rows) + i) % 3]
    load(pg, name, source_table(view, i, naive=kind == "naive"))
    where = {"table": name} if kind != "query" else {"query": f"SELECT * FROM {name}"}
    source = PostgreSQLSource(name=f"{name}_source", **source_options(view, i), **where)
    return case_view(name, view, i, source, (Field(name=f"f_arr{i}", dtype=Array(Float32)),))


def apply_case(store: FeatureStore, pg: PostgresServer, case: Case) -> list | FeatureService:
    """Register the case's objects (as the parquet suite's apply_case); what to ask for."""
    n = next(_names)
    views = [pg_feature_view(pg, f"pgc{n}_v{i}", v, i) for i, v in enumerate(case.views)]
    return register_case(store, case, views, f"pgc{n}", ("f_int", "f_float", "f_str", "f_arr"))


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    install_backends()
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def repo(pg, tmp_path_factory) -> Path:
    return write_repo(tmp_path_factory.mktemp("pg_differential").resolve() / "server", pg)


@pytest.fixture(scope="module")
def local(repo) -> FeatureStore:
    store = FeatureStore(repo_path=str(repo))
    store.apply([K1, K2])  # the registry exists before the servers read it
    return store


@pytest.fixture(scope="module")
def servers(repo, local, tmp_path_factory) -> Iterator[dict]:
    """A server per plan, each with a client repo of each kind."""
    base = tmp_path_factory.mktemp("pg_differential_clients").resolve()
    contexts = {plan: served(repo, base / plan, engine_settings(plan)) for plan in PLANS}
    entered = {plan: context.__enter__() for plan, context in contexts.items()}
    yield entered
    for context in contexts.values():
        context.__exit__(None, None, None)


# --- the property ----------------------------------------------------------------------


def assert_remote_equals_local(case: Case, pg, local: FeatureStore, servers: dict) -> None:
    features = apply_case(local, pg, case)
    entities = entity_frame(case)
    names = case.full_feature_names
    expected = local.get_historical_features(
        entity_df=entities, features=features, full_feature_names=names
    ).to_df()
    for plan, (server, clients) in servers.items():
        before, plans_before = engine_answers(server), plans_used(server)
        for client in CLIENTS:
            got = (
                clients[client]
                .get_historical_features(
                    entity_df=entities, features=features, full_feature_names=names
                )
                .to_df()
            )
            assert_same_answer(expected, got, f"plan {plan}, client {client}")
        assert engine_answers(server) == before + len(CLIENTS), f"plan {plan}"
        if plan != "auto":
            used = plans_used(server)
            assert used.get(plan, 0) == plans_before.get(plan, 0) + len(CLIENTS)


# Rows are (k1, k2, seconds after T0, f_int, f_float, f_str); entity rows (k1, k2, seconds).
# Rows of one key tied on time: no created column (every tied row answers), and
# created timestamps that tie, or are NULL (rows 4 and 9), at one time.
EXACT_TIES = a_case(
    [
        a_view(["k1"], rows=[(1, "a", 3, 1, 1.0, "x"), (1, "a", 3, 2, 2.0, "y")]),
        a_view(
            ["k1"],
            created=True,
            rows=[
                (1, "a", 2, 10, 0.5, "p"),
                (1, "a", 2, 11, 1.5, "q"),
                (1, "a", 2, 12, 2.5, "r"),
                (1, "a", 2, 13, 3.5, "s"),
                (1, "a", 2, 14, 4.5, "t"),  # created NULL: never matches
                (1, "a", 2, 15, 5.5, "u"),
                (2, "a", 1, 16, 6.5, None),
                (2, "a", 1, 17, 7.5, "w"),
                (2, "a", 1, 18, 8.5, "v"),
                (2, "a", 5, 19, 9.5, "z"),  # created NULL: the key's latest never matches
            ],
        ),
    ],
    [(1, "a", 3), (1, "a", 4), (2, "a", 6), (2, "a", 1), (1, "a", 1), (1, "a", 3)],
)
# A TTL under a second is no bound in Feast's postgres store (whole seconds, 0).
SUBSECOND_TTL = a_case(
    [a_view(["k1"], timedelta(milliseconds=500), rows=[(1, "a", 0, 1, 1.0, "x")])],
    [(1, "a", 0), (1, "a", 5), (2, "a", 9)],
)


@generated_cases(100, EXACT_TIES, SUBSECOND_TTL)
def test_remote_retrievals_equal_the_local_postgres_store(case, pg, local, servers):
    assert_remote_equals_local(case, pg, local, servers)


def without_exact_ties(view: ViewCase) -> ViewCase:
    """``view`` with no two rows of one key at one time: which of them a
    latest-row pull returns is arbitrary, in Feast's store as in the engine.
    Created timestamps are distinct by row number (see source_table)."""
    width = len(view.entities)
    firsts = {(*r[:width], r[2]): r for r in reversed(view.rows)}
    rows = tuple(r for r in view.rows if firsts[(*r[:width], r[2])] is r)
    return dataclasses.replace(view, rows=rows, created=False)


@settings(
    max_examples=10,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(view=view_cases(), window=st.sampled_from([(0, 4), (3, 3), (5, 100), (-5, 2)]))
@example(view=EXACT_TIES.views[1], window=(0, 100))  # NULL created timestamps
def test_remote_pulls_equal_the_local_postgres_store(view, window, pg, local, servers):
    latest_view = without_exact_ties(view)
    start, end = (T0 + timedelta(seconds=s) for s in window)
    server, clients = servers["auto"]
    before = plans_used(server).get("pull", 0)
    for api, pulled in (
        ("pull_all_from_table_or_query", view),
        ("pull_latest_from_table_or_query", latest_view),
    ):
        fv = pg_feature_view(pg, f"pgp{next(_names)}", pulled, 0)
        local.apply([K1, K2, fv])
        columns = ["f_int0", "raw_f0" if pulled.mapped else "f_float0", "f_str0", "f_arr0"]
        call = {
            "join_key_columns": list(pulled.entities),
            "feature_name_columns": columns,
            "timestamp_field": "ts",
            "created_timestamp_column": "created" if pulled.created else None,
            "start_date": start,
            "end_date": end,
        }
        expected = getattr(offline_store_of(local), api)(
            config=local.config, data_source=fv.batch_source, **call
        ).to_df()
        for client in CLIENTS:
            store = clients[client]
            got = getattr(offline_store_of(store), api)(
                config=store.config, data_source=fv.batch_source, **call
            ).to_df()
            assert_same_answer(expected, got, f"{api}, client {client}")
    assert plans_used(server).get("pull", 0) == before + 2 * len(CLIENTS)
