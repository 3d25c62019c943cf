"""flightlab in front of Feast's PostgreSQL offline store, on a real PostgreSQL.

The module starts a throwaway cluster (:mod:`flightlab.testing.postgres`;
``scripts/backends.sh`` installs PostgreSQL first where missing; no mocks, no
skip) and builds the sample repo on it: its tables, Feast's ``postgres``
offline store and Feast's SQL registry in the same database, as in the proof
of concept. One flightlab server serves
it; every call through flightlab's client and Feast's stock client must give
what the same call gives on the server repo's own FeatureStore.

The store lacks offline_write_batch and write_logged_features: through the
server they fail with the class they fail with locally. Database trouble
reaches the client as a clear error (down, credentials refused, a failing
query) and the server goes on serving.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from backend_helpers import (
    assert_concurrent_same,
    assert_historical_same,
    assert_pulls_same,
    client_stores,
    install_backends,
)
from feast import FeatureStore
from feast.feature_logging import FeatureServiceLoggingSource
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import (
    PostgreSQLOfflineStoreConfig,
)
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
    SavedDatasetPostgreSQLStorage,
)
from offline_helpers import ENTITY_KEYS, FEATURES, arrow, logged_rows, offline_store_of
from paths import MNIST_NPZ, MNIST_REPO, SCRIPTS
from service_helpers import healthcheck_action

from flightlab.client.transport import OfflineFlightClient
from flightlab.dispatch.backends import StoreBackend
from flightlab.errors import (
    OfflineStoreCredentialsError,
    OfflineStoreQueryError,
    OfflineStoreUnavailableError,
)
from flightlab.server import OfflineServer
from flightlab.testing.backend_repos import FILE_REGISTRY_YAML, create_postgres_repo
from flightlab.testing.postgres import (
    PostgresMissingError,
    PostgresServer,
    load_table,
    postgres_bin,
    start_postgres,
)
from flightlab.testing.sample_repo import driver_stats_frame, entity_frame

CLIENTS = ["flightlab", "feast"]


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    install_backends()  # PostgreSQL where missing
    server = start_postgres()  # raises, with PostgreSQL's output, if it cannot
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pg_repo(pg, tmp_path_factory) -> Path:
    return create_postgres_repo(tmp_path_factory.mktemp("pg").resolve() / "server", pg)


@pytest.fixture(scope="module")
def pg_server(pg_repo) -> Iterator[OfflineServer]:
    with OfflineServer(pg_repo, host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture(scope="module")
def local(pg_repo) -> FeatureStore:
    store = FeatureStore(repo_path=str(pg_repo))
    assert type(offline_store_of(store)).__name__ == "PostgreSQLOfflineStore"
    return store


@pytest.fixture(scope="module")
def remotes(pg, pg_server, tmp_path_factory) -> dict[str, FeatureStore]:
    return client_stores(tmp_path_factory.mktemp("pg_clients"), pg_server, pg.registry_yaml())


def rows_of(pg: PostgresServer, table: str) -> pd.DataFrame:
    with psycopg.connect(pg.conninfo()) as conn, conn.cursor() as cur:
        cur.execute(f'SELECT * FROM "{table}"')
        return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])


@pytest.mark.parametrize("client", CLIENTS)
def test_historical_features_match_the_local_store(client, local, remotes):
    assert_historical_same(local, remotes[client])


@pytest.mark.parametrize("client", CLIENTS)
def test_pull_latest_and_pull_all_match_the_local_store(client, local, remotes):
    assert_pulls_same(local, remotes[client])


def test_concurrent_retrievals_each_match_the_local_store(local, remotes):
    assert_concurrent_same(local, remotes["flightlab"])


@pytest.mark.parametrize("client", CLIENTS)
def test_an_entity_query_runs_in_the_database_as_locally(client, pg, local, remotes):
    load_table(pg, "entity_rows", arrow(entity_frame(25, seed=5)))
    sql = "SELECT * FROM entity_rows"
    expected = local.get_historical_features(sql, FEATURES).to_df()
    assert len(expected) == 25
    got = remotes[client].get_historical_features(sql, FEATURES).to_df()
    pd.testing.assert_frame_equal(
        got.sort_values(ENTITY_KEYS).reset_index(drop=True)[list(expected.columns)],
        expected.sort_values(ENTITY_KEYS).reset_index(drop=True),
    )


@pytest.mark.parametrize("client", CLIENTS)
def test_persist_writes_the_table_the_local_store_writes(client, pg, local, remotes):
    entities = entity_frame(30, seed=8)
    local.get_historical_features(entities, FEATURES).persist(
        SavedDatasetPostgreSQLStorage(table_ref=f"persisted_local_{client}")
    )
    # Feast's client sends only the destination's name: it must be registered
    # (the repo's persisted_rows); flightlab's sends the whole storage.
    destination = "persisted_rows" if client == "feast" else "persisted_remote"
    job = remotes[client].get_historical_features(entities, FEATURES)
    job.persist(SavedDatasetPostgreSQLStorage(table_ref=destination))

    expected = rows_of(pg, f"persisted_local_{client}")
    got = rows_of(pg, destination)
    assert len(expected) == 30
    pd.testing.assert_frame_equal(
        got.sort_values(ENTITY_KEYS).reset_index(drop=True),
        expected.sort_values(ENTITY_KEYS).reset_index(drop=True),
    )


def write_batch(store: FeatureStore) -> None:
    view = store.get_feature_view("driver_stats")
    rows = pa.Table.from_pandas(driver_stats_frame().head(3), preserve_index=False)
    offline_store_of(store).offline_write_batch(store.config, view, rows, progress=None)


def write_logs(store: FeatureStore) -> None:
    service = store.get_feature_service("driver_activity")
    offline_store_of(store).write_logged_features(
        config=store.config,
        data=logged_rows(store),
        source=FeatureServiceLoggingSource(service, store.project),
        logging_config=service.logging_config,
        registry=store.registry,
    )


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("write", [write_batch, write_logs], ids=["write_batch", "write_logs"])
def test_writes_the_store_lacks_fail_remotely_as_locally(write, client, pg, local, remotes):
    rows_before = len(rows_of(pg, "driver_stats"))
    with pytest.raises(NotImplementedError):
        write(local)
    with pytest.raises(NotImplementedError):
        write(remotes[client])
    assert len(rows_of(pg, "driver_stats")) == rows_before
    assert_historical_same(local, remotes[client])


@pytest.mark.parametrize("client", CLIENTS)
def test_a_failing_query_names_the_database_error(client, local, remotes, pg_server):
    sql = "SELECT * FROM no_such_table"
    # Locally: pandas' DatabaseError, caused by psycopg's UndefinedTable.
    with pytest.raises(pd.errors.DatabaseError) as local_failure:
        local.get_historical_features(sql, FEATURES).to_df()
    assert isinstance(local_failure.value.__cause__, psycopg.errors.UndefinedTable)
    with pytest.raises(OfflineStoreQueryError) as failed:
        remotes[client].get_historical_features(sql, FEATURES).to_df()
    assert 'relation "no_such_table" does not exist' in str(failed.value)
    if client == "flightlab":
        assert isinstance(failed.value.__cause__, flight.FlightServerError)
    assert pg_server.staging.summaries(everyone=True) == []
    assert_historical_same(local, remotes[client])


# --- the throwaway cluster itself ------------------------------------------------


def test_scripts_postgres_sh_starts_pauses_resumes_and_stops_a_cluster():
    # Under /tmp: the cluster's owner (as root: the postgres user) must enter it.
    folder = Path(tempfile.mkdtemp(prefix="flightlab-pg-cli-"))
    script = ["bash", str(SCRIPTS / "postgres.sh")]
    started = subprocess.run([*script, "start", str(folder)], capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    server = PostgresServer(port=int(started.stdout.strip()), folder=folder)
    try:
        with psycopg.connect(server.conninfo()) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("flightlab",)
        subprocess.run([*script, "pause", str(folder)], check=True, capture_output=True)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(server.conninfo(), connect_timeout=5)
        subprocess.run([*script, "resume", str(folder)], check=True, capture_output=True)
        with psycopg.connect(server.conninfo()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        stopped = subprocess.run([*script, "stop", str(folder)], capture_output=True, text=True)
    assert stopped.returncode == 0, stopped.stderr
    assert not folder.exists()


def test_without_postgresql_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no initdb on it, and no Debian folder
    with pytest.raises(PostgresMissingError, match=r"run `bash scripts/backends\.sh`"):
        postgres_bin(tmp_path)


# --- the database down, credentials refused: servers of their own -------------


@pytest.fixture
def own_pg() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.stop()


def file_registry_server(repo: Path, folder: Path) -> tuple[OfflineServer, dict[str, FeatureStore]]:
    server = OfflineServer(repo, host="127.0.0.1", port=0).start()
    registry = FILE_REGISTRY_YAML.replace("data/registry.db", str(repo / "data" / "registry.db"))
    return server, client_stores(folder, server, registry)


def test_the_database_down_is_unavailable_naming_it_then_served_again(own_pg, tmp_path):
    # The registry is a file, so that only the offline store needs the database.
    repo = create_postgres_repo(tmp_path / "server", own_pg, sql_registry=False)
    local = FeatureStore(repo_path=str(repo))
    server, clients = file_registry_server(repo, tmp_path / "clients")
    try:
        assert_historical_same(local, clients["flightlab"])
        own_pg.pause()
        for client in CLIENTS:
            with pytest.raises(OfflineStoreUnavailableError) as down:
                clients[client].get_historical_features(entity_frame(5), FEATURES).to_df()
            message = str(down.value)
            assert f"127.0.0.1:{own_pg.port}" in message and "unreachable" in message
        with pytest.raises(OfflineStoreUnavailableError) as down:
            clients["flightlab"].get_historical_features(entity_frame(5), FEATURES).to_df()
        assert isinstance(down.value.__cause__, flight.FlightUnavailableError)
        own_pg.resume()
        for client in CLIENTS:
            assert_historical_same(local, clients[client])
    finally:
        server.stop()


def test_refused_credentials_are_a_clear_server_side_error(pg, local, tmp_path):
    repo = create_postgres_repo(tmp_path / "server", pg, sql_registry=False, load=False)
    yaml = repo / "feature_store.yaml"
    yaml.write_text(yaml.read_text().replace("password: flightlab", "password: wrong"))
    server, clients = file_registry_server(repo, tmp_path / "clients")
    try:
        for client in CLIENTS:
            with pytest.raises(OfflineStoreCredentialsError) as refused:
                clients[client].get_historical_features(entity_frame(5), FEATURES).to_df()
            message = str(refused.value)
            assert "refused the server's credentials" in message
            assert 'password authentication failed for user "flightlab"' in message
        assert isinstance(refused.value, OfflineStoreCredentialsError)
        # The server still answers over the wire: its stats count both refusals,
        # and its health check says why it is not ready.
        with OfflineFlightClient(server.location, timeout=60) as flight_client:
            assert flight_client.stats()["errors_by_api"]["get_historical_features"] == 2
        health = wait_for_health(server.location, "password authentication failed")
        assert health["status"] == "NOT_SERVING" and not health["ready"]
    finally:
        server.stop()


def wait_for_health(location: str, words: str, seconds: float = 60) -> dict:
    """The ``healthcheck`` action's answer, once its detail says ``words``."""
    deadline = time.monotonic() + seconds
    while words not in (health := healthcheck_action(location))["detail"]:
        assert time.monotonic() < deadline, f"health never said {words!r}: {health}"
        time.sleep(0.2)
    return health


# --- the database ends a query midway -------------------------------------------

# An entity query that sleeps in the database: long enough to be caught running.
PAUSE = "flightlab_pause"
SLOW_ENTITY_SQL = f"SELECT e.* FROM slow_entities e CROSS JOIN pg_sleep(4) AS {PAUSE}"


def pids_running(pg: PostgresServer, words: str) -> list[int]:
    """The database backends whose running query contains ``words`` (not ours)."""
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE state = 'active' "
            "AND pid <> pg_backend_pid() AND strpos(query, %s) > 0",
            (words,),
        ).fetchall()
    return [pid for (pid,) in rows]


def interrupted_retrieval(pg: PostgresServer, remote: FeatureStore, how: str) -> Exception:
    """Start a slow retrieval; once its query runs in the database, end it with
    ``how`` (pg_terminate_backend or pg_cancel_backend) from another connection;
    return what the client raised."""
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(lambda: remote.get_historical_features(SLOW_ENTITY_SQL, FEATURES).to_df())
        deadline = time.monotonic() + 60
        while not (pids := pids_running(pg, PAUSE)):
            assert not job.done(), f"the retrieval ended before its query was seen: {job}"
            assert time.monotonic() < deadline, "the slow query never ran"
            time.sleep(0.05)
        with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
            for pid in pids:
                assert conn.execute(f"SELECT {how}(%s)", (pid,)).fetchone() == (True,)
        with pytest.raises(Exception) as failed:
            job.result(timeout=120)
    return failed.value


@pytest.fixture(scope="module")
def slow_entities(pg) -> None:
    load_table(pg, "slow_entities", arrow(entity_frame(5, seed=11)))


@pytest.mark.parametrize("client", CLIENTS)
def test_a_connection_the_database_ends_midway_is_unavailable_then_served_again(
    client, pg, local, remotes, pg_server, slow_entities
):
    failure = interrupted_retrieval(pg, remotes[client], "pg_terminate_backend")
    # psycopg's AdminShutdown (SQLSTATE 57P01), not an internal error.
    assert isinstance(failure, OfflineStoreUnavailableError), repr(failure)
    assert isinstance(failure, flight.FlightUnavailableError)
    message = str(failure)
    assert f"127.0.0.1:{pg.port}, database {pg.database}" in message, message
    assert "terminating connection due to administrator command" in message
    if client == "flightlab":
        assert isinstance(failure.__cause__, flight.FlightUnavailableError)
    assert pg_server.staging.summaries(everyone=True) == []
    assert_historical_same(local, remotes[client])


@pytest.mark.parametrize("client", CLIENTS)
def test_a_query_the_database_cancels_is_a_query_error_naming_it(
    client, pg, local, remotes, slow_entities
):
    failure = interrupted_retrieval(pg, remotes[client], "pg_cancel_backend")
    # psycopg's QueryCanceled (SQLSTATE 57014).
    assert isinstance(failure, OfflineStoreQueryError), repr(failure)
    message = str(failure)
    assert "cancelled" in message and f"database {pg.database}" in message, message
    assert "canceling statement due to user request" in message
    assert_historical_same(local, remotes[client])


@pytest.mark.parametrize(
    ("error", "expected", "words"),
    [
        (psycopg.errors.AdminShutdown, OfflineStoreUnavailableError, "shut down"),
        (psycopg.errors.CrashShutdown, OfflineStoreUnavailableError, "crashed"),
        (psycopg.errors.CannotConnectNow, OfflineStoreUnavailableError, "no connections now"),
        (psycopg.errors.QueryCanceled, OfflineStoreQueryError, "cancelled"),
    ],
)
def test_each_operator_intervention_sqlstate_has_its_error(error, expected, words):
    # 57P02 and 57P03 need a crashing or starting database: the translation of
    # psycopg's own classes, wrapped as pandas wraps them for Feast.
    config = PostgreSQLOfflineStoreConfig(
        host="db.example.com", port=5432, database="features", user="u", password="p"
    )
    backend = StoreBackend(config)
    try:
        raise pd.errors.DatabaseError("Execution failed") from error("the database's words")
    except pd.errors.DatabaseError as raised:
        translated = backend.translate(raised)
    assert type(translated) is expected
    message = str(translated)
    assert words in message and "the database's words" in message
    assert "at db.example.com:5432, database features" in message


# --- the MNIST demo's postgres profile -------------------------------------------


def test_the_mnist_postgres_profile_serves_the_shipped_images(pg, tmp_path):
    from flightlab import mnist
    from flightlab.mnist.postgres_repo import create_postgres_feature_repo

    data = mnist.load_mnist(MNIST_NPZ).head(1500)  # holds image 1000, corrected 30 days later
    repo = create_postgres_feature_repo(tmp_path / "mnist_pg", pg, MNIST_REPO, data)
    mnist.apply(repo)
    local = FeatureStore(repo_path=str(repo))
    assert type(offline_store_of(local)).__name__ == "PostgreSQLOfflineStore"
    with OfflineServer(repo, host="127.0.0.1", port=0) as server:
        client = mnist.write_client_repo(tmp_path / "client", "127.0.0.1", server.port, repo)
        remote = FeatureStore(repo_path=str(client))
        entity_df = mnist.entity_frame(count=len(data))
        expected = local.get_historical_features(
            entity_df, features=local.get_feature_service("mnist")
        ).to_arrow()
        got = remote.get_historical_features(
            entity_df, features=remote.get_feature_service("mnist")
        ).to_arrow()
        assert mnist.matches_data(mnist.sort_by_image(got), data)
        comparison = mnist.compare_retrievals(expected, got)
        assert comparison.equal and comparison.rows == len(data), comparison.differences
        case = mnist.point_in_time_case(data)
        case.check(remote.get_historical_features(case.entity_df, ["mnist:label"]).to_df())


def test_load_table_makes_the_same_table_with_adbc_as_with_psycopg(pg, monkeypatch):
    """ADBC's COPY (the default) and psycopg's (without the driver) give the
    same column types, ``real[]`` for the pixel rows among them, and rows."""
    from flightlab import mnist
    from flightlab.mnist.dataset import feature_table

    table = feature_table(mnist.load_mnist(MNIST_NPZ).head(50))
    pixels = table.column("feature_1").to_pylist()
    pixels[1], pixels[2][3] = None, None  # a NULL array, a NULL element
    table = table.set_column(1, "feature_1", pa.array(pixels, table.schema.field(1).type))

    def loaded(name: str) -> tuple[list[tuple], list[tuple]]:
        with psycopg.connect(pg.conninfo()) as conn:
            columns = conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod), attndims FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 ORDER BY attnum",
                (name,),
            ).fetchall()
            rows = conn.execute(f'SELECT t::text FROM "{name}" t ORDER BY image_id').fetchall()
        return columns, rows

    load_table(pg, "loaded_by_adbc", table)
    monkeypatch.setitem(sys.modules, "adbc_driver_postgresql.dbapi", None)
    load_table(pg, "loaded_by_psycopg", table)  # the driver's import now fails
    by_adbc, by_psycopg = loaded("loaded_by_adbc"), loaded("loaded_by_psycopg")
    assert by_adbc == by_psycopg
    types = {name: kind for name, kind, _ in by_adbc[0]}
    assert [types[f"feature_{i}"] for i in range(1, 29)] == ["real[]"] * 28
    assert types["event_timestamp"] == "timestamp with time zone"
    assert len(by_adbc[1]) == 50 and ",NULL," in by_adbc[1][2][0]
