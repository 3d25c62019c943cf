"""What the tests of flightlab's engine over PostgreSQL share: the cluster,
tables loaded by ADBC, repos on Feast's postgres store, servers with a plan
forced or chosen, and answers compared as multisets of rows."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
from feast import FeatureStore
from offline_helpers import PROJECT, both_clients

from flightlab.engine.postgres.settings import PostgresSettings
from flightlab.engine.settings import EngineSettings
from flightlab.server import OfflineServer
from flightlab.testing.backend_repos import FILE_REGISTRY_YAML, repo_yaml
from flightlab.testing.postgres import PostgresServer


def adbc_uri(pg: PostgresServer) -> str:
    return f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{pg.database}?sslmode=disable"


def load(pg: PostgresServer, name: str, table: pa.Table, index: tuple[str, ...] = ()) -> None:
    """(Re)create table ``name`` holding ``table`` (binary COPY), with an index."""
    with adbc.connect(adbc_uri(pg), autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f'DROP TABLE IF EXISTS "{name}"')
        cur.adbc_ingest(name, table, mode="create")
        if index:
            columns = ", ".join(f'"{c}"' for c in index)
            cur.execute(f'CREATE INDEX ON "{name}" ({columns})')
        cur.execute(f'ANALYZE "{name}"')


def sql(pg: PostgresServer, statement: str, *params: Any) -> list[tuple]:
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        cursor = conn.execute(statement, params or None)
        return cursor.fetchall() if cursor.description else []


def write_repo(path: Path, pg: PostgresServer, definitions: str = "") -> Path:
    """A repo on Feast's postgres store in ``pg``, its registry a file."""
    (path / "data").mkdir(parents=True, exist_ok=True)
    registry = FILE_REGISTRY_YAML.replace("data/registry.db", str(path / "data" / "registry.db"))
    (path / "feature_store.yaml").write_text(repo_yaml(registry, pg.offline_store_yaml(), PROJECT))
    if definitions:
        (path / "definitions.py").write_text(definitions)
    return path


def engine_settings(plan: str = "auto", **postgres: Any) -> EngineSettings:
    return EngineSettings(postgres=PostgresSettings(plan=plan, **postgres))


@contextmanager
def served(
    repo: Path, clients_folder: Path, settings: EngineSettings | None = None
) -> Iterator[tuple[OfflineServer, dict[str, FeatureStore]]]:
    """A server on ``repo`` and a client repo of each kind."""
    with OfflineServer(repo, host="127.0.0.1", port=0, engine=settings) as server:
        yield server, both_clients(clients_folder, server, repo)


def plans_used(server: OfflineServer) -> dict[str, int]:
    return dict(server.dispatcher.engine.postgres.usage().plans)


# --- comparing answers --------------------------------------------------------------


def _canonical(value: Any) -> Any:
    if isinstance(value, np.ndarray | list | tuple):
        return tuple(_canonical(v) for v in value)
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, float | np.floating) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def rows(frame: pd.DataFrame) -> Counter:
    return Counter(
        tuple(_canonical(v) for v in row) for row in frame.itertuples(index=False, name=None)
    )


def assert_same_answer(expected: pd.DataFrame, got: pd.DataFrame, what: str = "") -> None:
    """Same columns in the same order, same dtypes, same rows as multisets
    (row order is unspecified: Feast's postgres store promises none)."""
    assert list(got.columns) == list(expected.columns), what
    assert [str(t) for t in got.dtypes] == [str(t) for t in expected.dtypes], (
        what,
        dict(zip(expected.columns, got.dtypes, strict=True)),
        dict(expected.dtypes),
    )
    missing, extra = rows(expected) - rows(got), rows(got) - rows(expected)
    assert not missing and not extra, f"{what}: missing {dict(missing)}, extra {dict(extra)}"
