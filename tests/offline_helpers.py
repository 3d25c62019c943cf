"""What the flightlab core tests share: feature lists, client repos, comparisons,
waiting for a server, and small tables."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
from feast import FeatureStore
from feast.feature_logging import FeatureServiceLoggingSource
from feast.infra.offline_stores.remote import RemoteOfflineStore as FeastRemoteOfflineStore

from flightlab.client import RemoteOfflineStore
from flightlab.server import OfflineServer
from flightlab.testing.sample_repo import (
    DAYS,
    FEATURE_STORE_YAML,
    START,
    client_repo_yaml,
    entity_frame,
)
from flightlab.wire import protocol
from flightlab.wire.actions import ACTION_STATS
from flightlab.wire.flight_errors import decode_detail

FEATURES = [
    "driver_stats:conv_rate",
    "driver_stats:acc_rate",
    "driver_stats:avg_daily_trips",
    "customer_stats:avg_rating",
    "conv_rate_plus_val:conv_rate_plus_val",
]
PROJECT = "flightlab_sample"  # the project the client repos' yaml names
CLIENTS = ("flightlab", "stock")  # flightlab's client and Feast's stock one
ENTITY_KEYS = ["driver_id", "customer_id", "event_timestamp"]
DRIVER_KEYS = ["driver_id", "event_timestamp"]
# The shared server sends results in batches this small, so that every answer
# streams in several batches and every comparison exercises their reassembly.
SHARED_SERVER_BATCH_ROWS = 16
PULL_COLUMNS = {
    "join_key_columns": ["driver_id"],
    "feature_name_columns": ["conv_rate", "acc_rate", "avg_daily_trips"],
    "timestamp_field": "event_timestamp",
    "created_timestamp_column": "created",
}


def registry_of(repo: Path) -> Path:
    return repo / "data" / "registry.db"


def repo_yaml(offline_store: str, registry: str | Path = "data/registry.db") -> str:
    return (
        f"project: {PROJECT}\nprovider: local\n"
        f"registry:\n  path: {registry}\n  cache_ttl_seconds: 0\n"
        "online_store:\n  type: sqlite\n  path: data/online.db\n"
        f"offline_store:\n  type: {offline_store}\nentity_key_serialization_version: 3\n"
    )


def make_repo(
    path: Path, offline_store: str = "duckdb", registry: str | Path | None = None
) -> Path:
    """An empty repo folder (its ``data/`` made) with a ``feature_store.yaml``;
    ``registry``: another repo's registry file instead of its own."""
    (path / "data").mkdir(parents=True, exist_ok=True)
    (path / "feature_store.yaml").write_text(
        repo_yaml(offline_store, registry or "data/registry.db")
    )
    return path


def file_store_view_repo(path: Path, registry: Path) -> Path:
    """A repo at ``path`` over another repo's registry (and so its data),
    served by Feast's file (dask) offline store."""
    (path / "data").mkdir(parents=True, exist_ok=True)
    yaml = FEATURE_STORE_YAML.format(offline_store="file").replace(
        "path: data/registry.db", f"path: {registry}"
    )
    (path / "feature_store.yaml").write_text(yaml)
    return path


def logged_rows(store: FeatureStore, n: int = 3) -> pa.Table:
    """Rows in the logging schema of the sample repo's feature service driver_activity."""
    service = store.get_feature_service("driver_activity")
    schema = FeatureServiceLoggingSource(service, store.project).get_schema(store.registry)
    logged_at = START + timedelta(days=DAYS)
    columns: dict[str, list] = {}
    for field in schema:
        if field.name == "__request_id":
            columns[field.name] = [f"request-{i}" for i in range(n)]
        elif field.name == "__log_date":
            columns[field.name] = [logged_at.date()] * n
        elif pa.types.is_timestamp(field.type):
            columns[field.name] = [logged_at - timedelta(hours=i) for i in range(n)]
        elif pa.types.is_floating(field.type):
            columns[field.name] = [0.25 * i for i in range(n)]
        else:  # entity keys and statuses
            columns[field.name] = [1001 + i for i in range(n)]
    return pa.table(columns, schema=schema)


def make_client_store(
    client_repo: Path, port: int, server_repo: Path | None = None
) -> FeatureStore:
    """A client repo whose offline store is flightlab's RemoteOfflineStore,
    pointed at the server on ``port`` of 127.0.0.1.

    With ``server_repo`` it reads that repo's registry; without, its own.
    """
    (client_repo / "data").mkdir(parents=True, exist_ok=True)
    registry = registry_of(server_repo) if server_repo is not None else "data/registry.db"
    (client_repo / "feature_store.yaml").write_text(
        client_repo_yaml("127.0.0.1", port, registry=registry)
    )
    store = FeatureStore(repo_path=str(client_repo))
    assert isinstance(offline_store_of(store), RemoteOfflineStore)
    return store


def stock_client_yaml(port: int, registry: str | Path) -> str:
    """A client repo's feature_store.yaml with Feast's own remote offline store."""
    return (
        f"project: {PROJECT}\n"
        "provider: local\n"
        "registry:\n"
        f"  path: {registry}\n"
        "  cache_ttl_seconds: 0\n"
        "online_store:\n"
        "  type: sqlite\n"
        "  path: data/online.db\n"
        "offline_store:\n"
        "  type: remote\n"
        "  host: 127.0.0.1\n"
        f"  port: {port}\n"
        "entity_key_serialization_version: 3\n"
    )


def stock_client(path: Path, server: OfflineServer, registry: Path) -> FeatureStore:
    """A client repo that reads the server's registry file."""
    (path / "data").mkdir(parents=True, exist_ok=True)
    (path / "feature_store.yaml").write_text(stock_client_yaml(server.port, registry))
    store = FeatureStore(repo_path=str(path))
    assert isinstance(store._get_provider().offline_store, FeastRemoteOfflineStore)
    return store


def both_clients(folder: Path, server: OfflineServer, repo: Path) -> dict[str, FeatureStore]:
    """A client repo of each kind on ``server``, reading ``repo``'s registry:
    flightlab's client and Feast's stock one."""
    return {
        "flightlab": make_client_store(folder / "flightlab", server.port, repo),
        "stock": stock_client(folder / "stock", server, registry_of(repo)),
    }


def engine_answers(server: OfflineServer, engine: str = "flightlab") -> int:
    """How many requests ``engine`` answered on ``server``."""
    return server.stats_json()["requests_by_engine"].get(engine, 0)


def offline_store_of(store: FeatureStore):
    """The offline store a FeatureStore's provider calls (remote or local)."""
    return store._get_provider().offline_store


def pull(store: FeatureStore, api: str, source: str = "driver_stats_source", **window: Any):
    """A pull_* retrieval job, as Feast's materialization makes one."""
    method = getattr(offline_store_of(store), api)
    return method(
        config=store.config, data_source=store.get_data_source(source), **PULL_COLUMNS, **window
    )


def assert_same_rows(expected: pd.DataFrame, got: pd.DataFrame, keys: list[str]) -> None:
    """Same columns (in any order), same rows (in any order), same values and dtypes."""
    assert sorted(got.columns) == sorted(expected.columns)
    columns = list(expected.columns)
    order = keys + [c for c in columns if c not in keys]

    def tidy(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[columns].sort_values(order).reset_index(drop=True)

    pd.testing.assert_frame_equal(tidy(got), tidy(expected))


def server_stats(server: OfflineServer) -> dict[str, Any]:
    """The server's figures as any client reads them: the ``stats`` action."""
    client = flight.FlightClient(server.location)
    try:
        [result] = list(client.do_action(flight.Action(ACTION_STATS, b"")))
    finally:
        client.close()
    return json.loads(result.body.to_pybytes())


def requests_served(server: OfflineServer, api: str) -> int:
    return server_stats(server)["requests_by_api"].get(api, 0)


def assert_serving_and_clean(
    server: OfflineServer, client_store: FeatureStore, local_store: FeatureStore
) -> None:
    """No staged state left behind, and a good request still gets the local answer."""
    assert len(server.staging) == 0
    assert server_stats(server)["staged_commands"] == 0
    entities = entity_frame(12, seed=99)
    refs = ["driver_stats:conv_rate", "customer_stats:avg_rating"]
    assert_same_rows(
        local_store.get_historical_features(entities, refs).to_df(),
        client_store.get_historical_features(entities, refs).to_df(),
        ENTITY_KEYS,
    )


def flight_error_detail(exc: flight.FlightError) -> dict[str, str]:
    """The JSON detail a flightlab server attaches to every error."""
    detail = decode_detail(exc.extra_info) or decode_detail(str(exc))
    assert detail is not None, f"no flightlab error detail in {exc!r}"
    return detail


def assert_no_traceback(text: str) -> None:
    for tell in ("Traceback (most recent call last)", 'File "', '.py", line'):
        assert tell not in text, f"server internals leaked to the client: {text}"


def arrow(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False)


def raw_stage(raw: flight.FlightClient, request: protocol.Request) -> str:
    """Stage every parameter of ``request`` with plain pyarrow.flight do_puts."""
    command_id = protocol.new_command_id()
    for name, table in protocol.encode_request(request).items():
        metadata = {
            **(table.schema.metadata or {}),
            **protocol.put_metadata(command_id, request.api, name),
        }
        table = table.replace_schema_metadata(metadata)
        writer, _ = raw.do_put(protocol.command_descriptor(command_id), table.schema)
        writer.write_table(table)
        writer.close()
    return command_id


def new_driver_rows(hours_after_end: int, drivers: tuple[int, ...]) -> pd.DataFrame:
    """Driver stats later than any in the sample data, with recognisable values."""
    at = START + timedelta(days=DAYS, hours=hours_after_end)
    n = len(drivers)
    return pd.DataFrame(
        {
            "driver_id": pd.Series(drivers, dtype="int64"),
            "event_timestamp": pd.Series([at] * n).dt.as_unit("us"),
            "conv_rate": pd.Series([0.125 * (i + 1) for i in range(n)], dtype="float32"),
            "acc_rate": pd.Series([0.5] * n, dtype="float32"),
            "avg_daily_trips": pd.Series([4242 + i for i in range(n)], dtype="int64"),
            "created": pd.Series([at + timedelta(minutes=1)] * n).dt.as_unit("us"),
        }
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Whether ``predicate`` holds within ``timeout`` seconds (checked often):
    for what a server finishes just after its client has its answer."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def capture(fn: Callable[[], Any]) -> Any:
    """``fn()``'s result, or the exception it raised."""
    try:
        return fn()
    except Exception as exc:
        return exc


def _ints(count: int) -> pa.Table:
    return pa.table({"x": pa.array(range(count), pa.int64())})  # 8 bytes a row


@contextmanager
def watching_spill(spill_root: Path) -> Iterator[set[str]]:
    """The names of the folders under ``spill_root`` seen holding files while
    the block runs: the engine's requests that spilled (each into a folder of
    its own, which it removes when it ends)."""
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if spill_root.exists():
                seen.update(d.name for d in spill_root.iterdir() if _holds_files(d))
            done.wait(0.01)

    watcher = threading.Thread(target=watch, name="spill-watcher")
    watcher.start()
    try:
        yield seen
    finally:
        done.set()
        watcher.join()


def _holds_files(folder: Path) -> bool:
    try:
        return any(folder.iterdir())
    except FileNotFoundError:  # removed as we looked
        return False


def run_flightlab(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m flightlab ARGS`` run to its end, for commands that should
    fail at start-up: its exit code and what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "flightlab", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )
