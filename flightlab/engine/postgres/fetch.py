"""Plan B: fetch each view's window, then DuckDB's ASOF join.

Each view's source is read for the columns it needs and the event times the
entity rows can use (:meth:`PostgresSource.read`), into the request's DuckDB
database, where the engine's memory limit and spill folder apply; then the
engine's one query (:mod:`flightlab.engine.sql`) joins, with the postgres
store's rules: rows with a NULL created timestamp were left in PostgreSQL,
the TTL counts whole seconds, and where a window holds rows tied on keys,
event and created timestamps, every tied row gives an output row.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import duckdb
import pyarrow as pa

from flightlab.engine import sql
from flightlab.engine.postgres.connections import Session
from flightlab.engine.postgres.source import FetchedRows, Seek
from flightlab.engine.postgres.types import upload_type
from flightlab.engine.postgres.views import PgView
from flightlab.engine.reading import TimeWindow, sql_name

_tables = itertools.count()


def fetched_views(
    session: Session,
    database: duckdb.DuckDBPyConnection,
    views: Sequence[PgView],
    entity_rows: pa.Table,
    times: tuple[datetime, datetime],
    seek: bool,
    counted: Callable[[pa.RecordBatch], None],
) -> list[sql.ViewQuery] | None:
    """Each view's window fetched into ``database``, as the engine's query
    reads it; None when a fetched array has more than one dimension (Feast's
    store, which fails on it, is to answer)."""
    earliest, latest = times
    queries = []
    for view in views:
        ttl = timedelta(seconds=view.ttl_seconds) if view.ttl_seconds else None
        window = TimeWindow(earliest - ttl if ttl else None, latest)
        seeking = None
        if seek and view.join_keys:
            seeking = Seek(_upload_keys(session, entity_rows, view), view.join_keys, earliest)
        rows = view.source.read(
            database,
            view.columns,
            view.timestamp_column,
            window,
            session=session,
            created=view.created_column,
            seek=seeking,
            counted=counted,
            guarded=view.guarded,
        )
        if rows.dimensions is not None and rows.dimensions > 1:
            return None
        queries.append(
            sql.ViewQuery(
                source=rows,
                source_columns=view.columns,
                field_mapping=(),
                timestamp_field=view.timestamp_column,
                created_timestamp_column=view.created_column,
                join_keys=view.join_keys,
                features=view.features,
                ttl=ttl,
                every_tie=_has_ties(database, rows, view),
            )
        )
    return queries


def _upload_keys(session: Session, entity_rows: pa.Table, view: PgView) -> str:
    """The view's distinct entity keys into a TEMP table (named as the entity columns)."""
    keys = list(dict.fromkeys(view.entity_columns))
    table = entity_rows.select(keys).group_by(keys).aggregate([])
    table = pa.table({k: table.column(k).cast(upload_type(table.column(k).type)) for k in keys})
    name = f"flightlab_keys_{next(_tables)}"
    cursor = session.cursor()
    try:
        cursor.adbc_ingest(name, table, mode="create", temporary=True)
    finally:
        cursor.close()
    session.execute(f"ANALYZE pg_temp.{sql_name(name)}")
    return name


def _has_ties(database: duckdb.DuckDBPyConnection, rows: FetchedRows, view: PgView) -> bool:
    """Whether two fetched rows share keys, event and created timestamps."""
    same = [source for source, _ in view.join_keys] + [view.timestamp_column]
    if view.created_column:
        same.append(view.created_column)
    group = ", ".join(sql_name(c) for c in dict.fromkeys(same))
    found = database.execute(
        f"SELECT 1 FROM {rows.read_sql()} GROUP BY {group} HAVING count(*) > 1 LIMIT 1"
    ).fetchone()
    return found is not None
