"""Faults around flightlab's engine over PostgreSQL, each a clear error, the server still serving.

A real cluster, a repo on Feast's postgres store (its registry a file, so that
only the offline store needs the database), a flightlab server whose engine
answers, both clients. Each fault reaches both clients as a flightlab error
of the right Flight class, naming the problem, and a good request afterwards
gets the local answer:

- the database down (the cluster paused), and restarted midway (its backends
  terminated while a request runs, and while a result streams);
- a missing table, a missing column, a query source that fails (at once,
  midway, with a huge message);
- refused credentials: the password in no message and no log line;
- a statement timeout;
- a client that goes away midway: the query is cancelled in PostgreSQL and
  the connection is back in the pool;
- the pool's bound: never more sessions than its size.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from backend_helpers import install_backends
from feast import Entity, FeatureStore, FeatureView, Field
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
    PostgreSQLSource,
)
from feast.types import Float32, Int64
from feast.value_type import ValueType
from offline_helpers import CLIENTS, engine_answers, offline_store_of
from postgres_engine_helpers import (
    assert_same_answer,
    engine_settings,
    load,
    served,
    sql,
    write_repo,
)

from flightlab.client.transport import OfflineFlightClient
from flightlab.errors import (
    MAX_MESSAGE_CHARS,
    MalformedEntityDataError,
    OfflineStoreCredentialsError,
    OfflineStoreQueryError,
    OfflineStoreUnavailableError,
)
from flightlab.testing.postgres import PostgresServer, start_postgres
from flightlab.wire import protocol

T0 = datetime(2025, 1, 1, tzinfo=UTC)
DRIVER = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
RIDER = Entity(name="rider", join_keys=["rider_id"], value_type=ValueType.INT64)
APP = "flightlab-faults"  # the server's sessions in pg_stat_activity
PASSWORD = "Wr0ng-Pa55-zq9"
LONG_ROWS = 1_000_000
CONV = [Field(name="conv_rate", dtype=Float32)]


def view(name: str, features: list[Field] = CONV, **source: str) -> FeatureView:
    return FeatureView(
        name=name,
        entities=[DRIVER],
        schema=features,
        source=PostgreSQLSource(name=f"{name}_source", timestamp_field="ts", **source),
    )


def slow(seconds: float) -> str:
    """A query source whose rows come only after ``seconds`` in the database."""
    return f"SELECT s.* FROM small s CROSS JOIN pg_sleep({seconds}) AS flightlab_pause"


def entities(n: int = 20) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "driver_id": np.arange(n, dtype="int64") % 10,
            "event_timestamp": [T0 + timedelta(days=2, hours=i) for i in range(n)],
        }
    )


def sessions(pg: PostgresServer, application: str = APP, state: str | None = None) -> int:
    where = "application_name = %s" + (" AND state = %s" if state else "")
    params = (application, state) if state else (application,)
    return sql(pg, f"SELECT count(*) FROM pg_stat_activity WHERE {where}", *params)[0][0]


def wait_for(condition, seconds: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def pull_all(store: FeatureStore, source: str = "long_source"):
    return offline_store_of(store).pull_all_from_table_or_query(
        config=store.config,
        data_source=store.get_data_source(source),
        join_key_columns=["driver_id"],
        feature_name_columns=["conv_rate"],
        timestamp_field="ts",
        start_date=T0,
        end_date=T0 + timedelta(days=400),
    )


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    install_backends()
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def repo(pg, tmp_path_factory) -> Path:
    path = write_repo(tmp_path_factory.mktemp("pg_faults").resolve() / "server", pg)
    rng = np.random.default_rng(3)
    stamps = [T0 + timedelta(hours=i) for i in range(100)]
    load(
        pg,
        "small",
        pa.table(
            {
                "driver_id": pa.array(np.arange(100) % 10, pa.int64()),
                "ts": pa.array(stamps, pa.timestamp("us", "UTC")),
                "conv_rate": pa.array(rng.random(100), pa.float32()),
                "trips": pa.array(np.arange(100), pa.int64()),
            }
        ),
    )
    seconds = np.sort(rng.integers(0, 365 * 86_400, LONG_ROWS)).astype("int64") * 1_000_000
    epoch = int(T0.timestamp()) * 1_000_000
    load(
        pg,
        "long",
        pa.table(
            {
                "driver_id": pa.array(rng.integers(0, 1000, LONG_ROWS), pa.int64()),
                "ts": pa.array(seconds + epoch, pa.timestamp("us", "UTC")),
                "conv_rate": pa.array(rng.random(LONG_ROWS), pa.float32()),
            }
        ),
    )
    store = FeatureStore(repo_path=str(path))
    store.apply(
        [
            DRIVER,
            RIDER,
            view("small", table="small"),
            view("long", table="long"),
            view("sleepy", query=slow(3)),  # plan A sleeps once per entity row
            view("napping", query=slow(0.5)),
            view("no_table", table="no_such_table"),
            FeatureView(
                name="paired",  # two join keys: driver_id and rider_id
                entities=[DRIVER, RIDER],
                schema=CONV,
                source=PostgreSQLSource(
                    name="paired_source",
                    timestamp_field="ts",
                    query="SELECT driver_id, driver_id + 1 AS rider_id, ts, conv_rate FROM small",
                ),
            ),
            view("no_column", features=[Field(name="no_such_column", dtype=Int64)], table="small"),
            view("broken", query="SELECT driver_id, ts, conv_rate FROM small WHERE"),
            view("dividing", features=[Field(name="ratio", dtype=Int64)],
                 query="SELECT driver_id, ts, 100 / (trips - 57) AS ratio FROM small"),
            view("verbose", query="SELECT driver_id, ts, conv_rate FROM small WHERE "
                 + " AND ".join(f"no_column_{i} > 0" for i in range(400))),
        ]
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def local(repo) -> FeatureStore:
    return FeatureStore(repo_path=str(repo))


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory) -> Iterator[tuple]:
    folder = tmp_path_factory.mktemp("pg_faults_clients").resolve()
    settings = engine_settings("pit", application_name=APP, pool_size=3)
    with served(repo, folder, settings) as running:
        yield running


def assert_still_serving(running, clients, local) -> None:
    """A good request gets the local answer through both clients, from the engine."""
    expected = local.get_historical_features(entities(), ["small:conv_rate"]).to_df()
    before = engine_answers(running)
    for client in CLIENTS:
        got = clients[client].get_historical_features(entities(), ["small:conv_rate"]).to_df()
        assert_same_answer(expected, got, client)
    assert engine_answers(running) == before + len(CLIENTS)


def failure(store: FeatureStore, refs: list[str], rows: int = 20) -> Exception:
    with pytest.raises(Exception) as failed:
        store.get_historical_features(entities(rows), refs).to_df()
    return failed.value


# --- the database down, or restarted midway ------------------------------------------


def test_the_database_down_is_unavailable_naming_it_then_served_again(pg, server, local):
    running, clients = server
    assert_still_serving(running, clients, local)  # a pooled session, soon dead
    pg.pause()
    try:
        for client in CLIENTS:
            started = time.monotonic()
            down = failure(clients[client], ["small:conv_rate"])
            assert isinstance(down, OfflineStoreUnavailableError), repr(down)
            assert isinstance(down, flight.FlightUnavailableError)
            assert f"127.0.0.1:{pg.port}, database {pg.database}" in str(down)
            assert time.monotonic() - started < 30  # never a hang
    finally:
        pg.resume()
    assert_still_serving(running, clients, local)


def terminate_when_running(pg: PostgresServer, words: str) -> None:
    """Terminate the server's backends once one of them runs ``words``."""
    wait_for(
        lambda: sql(
            pg,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND state = 'active' AND strpos(query, %s) > 0",
            APP,
            words,
        )[0][0],
        what=f"a query with {words!r}",
    )
    sql(pg, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        APP)  # fmt: skip


@pytest.mark.parametrize("client", CLIENTS)
def test_the_database_ending_a_running_request_is_unavailable(client, pg, server, local):
    running, clients = server
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(failure, clients[client], ["sleepy:conv_rate"], 1)
        terminate_when_running(pg, "flightlab_pause")
        ended = job.result(timeout=60)
    assert isinstance(ended, OfflineStoreUnavailableError), repr(ended)
    assert isinstance(ended, flight.FlightUnavailableError)
    assert f"database {pg.database}" in str(ended)
    assert "terminating connection due to administrator command" in str(ended)
    assert_still_serving(running, clients, local)


def test_the_database_ending_a_stream_midway_is_unavailable(pg, server, local):
    running, clients = server
    batches = pull_all(clients["flightlab"]).to_arrow_batches()
    first = next(batches)
    assert 0 < first.num_rows < LONG_ROWS
    sql(pg, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        APP)  # fmt: skip
    with pytest.raises(OfflineStoreUnavailableError) as ended:
        for _ in batches:
            pass
    assert f"127.0.0.1:{pg.port}, database {pg.database}" in str(ended.value)
    assert "closed the connection midway" in str(ended.value) or "terminating" in str(ended.value)
    assert_still_serving(running, clients, local)


# --- the request's own faults ----------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("no_table:conv_rate", 'relation "no_such_table" does not exist'),
        ("no_column:no_such_column", "'no_such_column'"),
        ("broken:conv_rate", 'ERROR:  syntax error at or near ")"'),
        ("dividing:ratio", "division by zero"),
    ],
    ids=["missing table", "missing column", "failing query", "failing midway"],
)
def test_a_query_that_fails_names_the_problem(ref, words, pg, server, local):
    running, clients = server
    for client in CLIENTS:
        failed = failure(clients[client], [ref])
        assert isinstance(failed, OfflineStoreQueryError), repr(failed)
        assert isinstance(failed, flight.FlightServerError)
        message = str(failed)
        assert words in message, message
        assert "Query was" not in message  # ADBC's tail: the whole statement
    assert_still_serving(running, clients, local)


def test_entity_rows_without_a_join_key_are_malformed_naming_it(server, local):
    """A view joining on two keys, asked with entity rows that lack one."""
    running, clients = server
    request = protocol.GetHistoricalFeatures(
        features=("paired:conv_rate",), entity_df=pa.Table.from_pandas(entities())
    )
    with OfflineFlightClient(running.location) as wire:
        with pytest.raises(MalformedEntityDataError, match="no column 'rider_id'") as caught:
            wire.fetch(request)
    assert isinstance(caught.value, flight.FlightServerError)
    assert_still_serving(running, clients, local)


def test_a_huge_database_message_is_bounded(server, local):
    running, clients = server
    for client in CLIENTS:
        failed = failure(clients[client], ["verbose:conv_rate"])
        assert isinstance(failed, OfflineStoreQueryError), repr(failed)
        assert 'column "no_column_0" does not exist' in str(failed)
        assert len(str(failed)) <= MAX_MESSAGE_CHARS + 100
    assert_still_serving(running, clients, local)


def test_a_statement_timeout_is_a_query_error_naming_it(repo, tmp_path, local):
    settings = engine_settings("pit", application_name=APP, statement_timeout=1.0)
    with served(repo, tmp_path, settings) as (running, clients):
        for client in CLIENTS:
            started = time.monotonic()
            failed = failure(clients[client], ["sleepy:conv_rate"], 1)
            assert isinstance(failed, OfflineStoreQueryError), repr(failed)
            assert "canceling statement due to statement timeout" in str(failed)
            assert "--postgres-statement-timeout" in str(failed)
            assert time.monotonic() - started < 15
        assert_still_serving(running, clients, local)


@pytest.mark.parametrize("plan", ["fetch", "seek"])
def test_a_failure_fetching_a_window_names_the_problem(plan, repo, tmp_path, local):
    """Plan B reads a view's window through DuckDB's scan of the driver's
    stream: the database's own error still reaches the client, named."""
    settings = engine_settings(plan, application_name=APP, statement_timeout=1.0)
    with served(repo, tmp_path, settings) as (running, clients):
        for client in CLIENTS:
            for ref, words in (
                ("sleepy:conv_rate", "canceling statement due to statement timeout"),
                ("dividing:ratio", "division by zero"),
            ):
                failed = failure(clients[client], [ref])  # 20 rows: the window holds trips 57
                assert isinstance(failed, OfflineStoreQueryError), (plan, ref, repr(failed))
                assert words in str(failed), (plan, ref, str(failed))
        assert_still_serving(running, clients, local)


def test_refused_credentials_name_no_password_anywhere(pg, repo, tmp_path, local, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = write_repo(tmp_path / "wrong", pg)
    yaml = wrong / "feature_store.yaml"
    yaml.write_text(yaml.read_text().replace("password: flightlab", f"password: {PASSWORD}"))
    (wrong / "data" / "registry.db").write_bytes((repo / "data" / "registry.db").read_bytes())
    with served(wrong, tmp_path / "clients", engine_settings(application_name=APP)) as (
        running,
        clients,
    ):
        for client in CLIENTS:
            refused = failure(clients[client], ["small:conv_rate"])
            assert isinstance(refused, OfflineStoreCredentialsError), repr(refused)
            assert isinstance(refused, flight.FlightInternalError)
            assert 'password authentication failed for user "flightlab"' in str(refused)
            assert PASSWORD not in str(refused) and PASSWORD not in repr(refused.args)
        for client in CLIENTS:  # pulls: the engine's own connection too
            with pytest.raises(OfflineStoreCredentialsError):
                pull_all(clients[client], "small_source").to_df()
    logged = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''} {r.exc_info or ''}" for r in caplog.records
    )
    assert "password authentication failed" in logged  # the log said why
    assert PASSWORD not in logged and PASSWORD not in caplog.text


# --- the client gone, the pool's bound ----------------------------------------------------


def test_a_client_gone_midway_cancels_the_query_and_frees_its_connection(pg, server, local):
    running, clients = server
    pools = running.dispatcher.engine.postgres
    batches = pull_all(clients["flightlab"]).to_arrow_batches()
    assert next(batches).num_rows > 0
    assert sessions(pg, state="active") == 1  # the stream's query, waiting for us
    batches.close()  # the client stops reading: its call is cancelled
    wait_for(lambda: sessions(pg, state="active") == 0, what="the query cancelled")
    wait_for(
        lambda: all(p["idle"] == p["open"] for p in pools.usage().pools),
        what="the connection back in the pool",
    )
    assert all(p["open"] <= p["size"] for p in pools.usage().pools)
    assert_still_serving(running, clients, local)


def test_the_pool_bounds_the_servers_sessions(pg, repo, tmp_path, local):
    application = "flightlab-pool"
    settings = engine_settings("pit", application_name=application, pool_size=2)
    seen = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(sessions(pg, application))
            time.sleep(0.02)

    expected = local.get_historical_features(entities(1), ["napping:conv_rate"]).to_df()
    with served(repo, tmp_path, settings) as (running, clients):
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with ThreadPoolExecutor(6) as pool:
                jobs = [
                    pool.submit(
                        lambda c=CLIENTS[i % 2]: (
                            clients[c]
                            .get_historical_features(entities(1), ["napping:conv_rate"])
                            .to_df()
                        )
                    )
                    for i in range(6)
                ]
                answers = [job.result(timeout=120) for job in jobs]
        finally:
            stop.set()
            watcher.join()
    for got in answers:
        assert_same_answer(expected, got)
    assert max(seen) == 2, seen  # all used, never more
