"""The engine limit: one plain DuckDB ``ASOF LEFT JOIN`` per retrieval, in-process.

What flightlab's engine could reach at best on this machine: the entity rows
registered as an Arrow table, each feature view ``ASOF LEFT JOIN``-ed straight
from its parquet source, the result fetched into Arrow. No Feast, no server, no
wire, none of the engine's rules on top (TTL bound, created-timestamp
tie-break, field mappings): the benchmark's data needs none of them to give
Feast's answer (every entity row finds a feature row within the TTL, no
created timestamps tie), so the rows are the same and only the cost differs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

ENTITY_TABLE = "entity_rows"


def _name(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _parquet(path: str, repo: Path) -> str:
    """``read_parquet`` of a FileSource path: a file or a folder of files,
    relative paths from the repo, as Feast reads them."""
    resolved = Path(path) if Path(path).is_absolute() else repo / path
    target = str(resolved / "**" / "*.parquet") if resolved.is_dir() else str(resolved)
    return "read_parquet('" + target.replace("'", "''") + "')"


def limit_query(repo: Path, refs: list[str], entity_columns: list[str]) -> str:
    """The SQL answering ``refs`` (``view:feature``) for entity rows with
    ``entity_columns``, from the views' definitions in the repo's registry."""
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    wanted: dict[str, list[str]] = {}
    for ref in refs:
        view, feature = ref.split(":", 1)
        wanted.setdefault(view, []).append(feature)
    selected = [f"e.{_name(c)}" for c in entity_columns]
    ctes, joins = [], []
    for i, (view_name, features) in enumerate(wanted.items()):
        view = store.get_feature_view(view_name)
        source = view.batch_source
        keys = [column.name for column in view.entity_columns]
        ts = source.timestamp_field
        columns = [*keys, ts, *features]
        ctes.append(
            f"v{i} AS (SELECT {', '.join(map(_name, columns))} FROM {_parquet(source.path, repo)})"
        )
        selected += [f"v{i}.{_name(f)}" for f in features]
        conditions = [f"e.{_name(k)} = v{i}.{_name(k)}" for k in keys]
        conditions.append(f"e.event_timestamp >= v{i}.{_name(ts)}")
        joins.append(f"ASOF LEFT JOIN v{i} ON {' AND '.join(conditions)}")
    return (
        f"WITH {', '.join(ctes)} SELECT {', '.join(selected)} "
        f"FROM {ENTITY_TABLE} AS e {' '.join(joins)}"
    )


def run_limit(query: str, entity_df: pd.DataFrame, memory_limit: str | None = None) -> pa.Table:
    """One retrieval: a fresh database (as the engine opens one per request,
    with the server's ``memory_limit`` if given), the entity frame as an Arrow
    table, the query, the result in Arrow."""
    entity_rows = pa.Table.from_pandas(entity_df, preserve_index=False)
    with tempfile.TemporaryDirectory(prefix="flightlab-limit-spill-") as spill:
        # Over its limit the join spills: into a folder of its own, as the
        # engine's (DuckDB's default is .tmp in the working directory).
        config = {"temp_directory": spill}
        if memory_limit:
            config["memory_limit"] = memory_limit
        return _joined(query, entity_rows, duckdb.connect(config=config))


def _joined(query: str, entity_rows: pa.Table, database: duckdb.DuckDBPyConnection) -> pa.Table:
    try:
        # The ASOF join against a registered Arrow table may otherwise be
        # planned as a nested-loop join (minutes at 100k rows); the entity
        # timestamps are UTC, so is the session.
        database.execute("SET asof_loop_join_threshold = 0")
        database.execute("SET TimeZone = 'UTC'")
        database.register(ENTITY_TABLE, entity_rows)
        return database.sql(query).to_arrow_table()
    finally:
        database.close()
