"""Plan A: the point-in-time join runs in PostgreSQL.

The entity rows' row ids, join keys and timestamps go into a TEMP table by
binary COPY (``adbc_ingest``), sorted by keys and timestamp so that
neighbouring probes hit neighbouring index pages. One query joins each view
``LEFT JOIN LATERAL``: per entity row, the source rows of its key at or
before its timestamp (and within the TTL), latest first, which an index on
(keys, timestamp) answers with one backward probe. The result streams back
as Arrow batches, each put next to its entity rows by row id, so the entity
columns come back exactly as they were sent.

The LATERAL follows Feast's postgres store's rules: a row whose created
timestamp is NULL never matches, ``FETCH FIRST 1 ROWS WITH TIES`` gives one
output row per row tied on (timestamp, created), and the TTL counts whole
seconds, compared as the store compares it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from flightlab.engine.postgres.connections import Session
from flightlab.engine.postgres.source import pg_temp
from flightlab.engine.postgres.types import NUMERIC, cast_batch, dimensions_sql, upload_type
from flightlab.engine.postgres.views import PgView
from flightlab.engine.reading import sql_name

ROW_ID = "__flightlab_rid"
_tables = itertools.count()


def upload_entity_rows(
    session: Session, entity_rows: pa.Table, keys: Sequence[str], timestamp: str
) -> str:
    """(row id, ``keys``, ``timestamp``) of every entity row into a new TEMP
    table (named as the entity columns); its name."""
    columns = {ROW_ID: pa.array(range(entity_rows.num_rows), pa.int64())}
    for key in keys:
        column = entity_rows.column(key)
        columns[key] = column.cast(upload_type(column.type))
    columns[timestamp] = entity_rows.column(timestamp)
    table = pa.table(columns)
    order = [(name, "ascending") for name in [*keys, timestamp]]
    table = table.take(pc.sort_indices(table, sort_keys=order))
    name = f"flightlab_entities_{next(_tables)}"
    cursor = session.cursor()
    try:
        cursor.adbc_ingest(name, table, mode="create", temporary=True)
    finally:
        cursor.close()
    session.execute(f"ANALYZE {pg_temp(name)}")  # TEMP tables are never auto-analyzed
    return name


def pit_sql(
    entity_table: str,
    entity_columns: Sequence[str],
    timestamp: str,
    views: Sequence[PgView],
    types: Sequence[dict[str, str]],
) -> str:
    """``entity_columns`` of each row of ``entity_table``, then each view's
    features (named ``f{view}_{feature}``)."""
    selected = [f"e.{sql_name(c)}" for c in entity_columns]
    joins: list[str] = []
    guards: list[str] = []
    for i, (view, kinds) in enumerate(zip(views, types, strict=True)):
        ts = f"s.{sql_name(view.timestamp_column)}"
        entity_ts = f"e.{sql_name(timestamp)}"
        conditions = [f"s.{sql_name(src)} = e.{sql_name(ent)}" for src, ent in view.join_keys]
        conditions.append(f"{ts} <= {entity_ts}")
        if view.ttl_seconds:
            conditions.append(f"{ts} >= {entity_ts} - {view.ttl_seconds} * interval '1' second")
        order = [f"{ts} DESC"]
        if view.created_column:
            created = f"s.{sql_name(view.created_column)}"
            conditions.append(f"{created} IS NOT NULL")
            order.append(f"{created} DESC")
        features = [
            f"{_value(f's.{sql_name(src)}', kinds[src])} AS {sql_name(f'f{i}_{j}')}"
            for j, (src, _) in enumerate(view.features)
        ] or ["1 AS __flightlab_none"]
        if view.guarded:  # the arrays' dimensions, in a last column per view
            features.append(f"{dimensions_sql(view.guarded)} AS {sql_name(f'd{i}')}")
            guards.append(f"v{i}.{sql_name(f'd{i}')}")
        joins.append(
            f"LEFT JOIN LATERAL (SELECT {', '.join(features)} FROM {view.source.from_sql} AS s "
            f"WHERE {' AND '.join(conditions)} ORDER BY {', '.join(order)} "
            f"FETCH FIRST 1 ROWS WITH TIES) AS v{i} ON true"
        )
        selected += [f"v{i}.{sql_name(f'f{i}_{j}')}" for j in range(len(view.features))]
    selected += guards
    return f"SELECT {', '.join(selected)} FROM {pg_temp(entity_table)} AS e {' '.join(joins)}"


def guard_names(views: Sequence[PgView]) -> list[str]:
    """What each dimension column of :func:`pit_sql` checks, in its order."""
    return [
        f"feature view {view.name!r} ({view.source.description})" for view in views if view.guarded
    ]


def _value(column: str, typname: str) -> str:
    return f"CAST({column} AS double precision)" if typname == NUMERIC else column


def stitched(
    batches: Iterator[pa.RecordBatch],
    entity_rows: pa.Table,
    schema: pa.Schema,
    counted: Callable[[int], None],
) -> Iterator[pa.RecordBatch]:
    """Each result batch (row id, features) next to its entity rows, in
    ``schema``'s types."""
    width = entity_rows.num_columns
    for batch in batches:
        rows = entity_rows.take(batch.column(0))
        arrays = [column.combine_chunks() for column in rows.columns] + batch.columns[1:]
        counted(batch.num_rows)
        yield cast_batch(pa.RecordBatch.from_arrays(arrays, names=schema.names), schema, width)
