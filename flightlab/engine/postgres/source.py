"""A ``PostgreSQLSource`` (a table or a query) as the engine reads it.

:class:`PostgresSource` is the source's :class:`~flightlab.engine.reading.SourceReader`:
its columns and their PostgreSQL types come from the statement's description
(prepared, not run), and :meth:`PostgresSource.read` fetches only the
columns a request needs, only in its event-time window, into the request's
DuckDB database, streamed with ADBC so that the engine's memory limit and
spill folder apply (plan B). With ``seek``, the rows at or before the
earliest entity timestamp are not fetched in full: one backward index probe
per entity key takes only the latest of them.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa

from flightlab.engine.postgres.connections import Session, SessionPool
from flightlab.engine.postgres.streams import QueryStream
from flightlab.engine.postgres.types import (
    DIMENSIONS,
    NUMERIC,
    TIMESTAMP_TYPES,
    dimensions_sql,
    pg_type,
)
from flightlab.engine.reading import TimeWindow, sql_name, sql_string

_tables = itertools.count()
ROW_ID = "__flightlab_pg_row"


@dataclass(frozen=True)
class Seek:
    """Plan B's seek: ``keys_table`` (a TEMP table of the entity rows'
    distinct keys) holds each ``(source column, key table column)``; rows at
    or before ``earliest`` come from one probe per key."""

    keys_table: str
    keys: tuple[tuple[str, str], ...]
    earliest: datetime


class PostgresSource:
    """A ``PostgreSQLSource`` of one offline store (its pool)."""

    def __init__(self, data_source: Any, pool: SessionPool):
        self.data_source = data_source
        self.pool = pool
        # As Feast's store writes it: a table name unquoted (it may be
        # schema-qualified, and folds to lower case), or "(query)".
        self.from_sql = data_source.get_table_query_string()
        options = data_source._postgres_options
        self.table = options._table or None
        self.description = (
            f"table {self.table}" if self.table else f"query {_short(options._query)}"
        )
        self._schema: pa.Schema | None = None
        self._lock = threading.Lock()

    # --- what the source holds ----------------------------------------------------

    def schema(self, session: Session) -> pa.Schema:
        """The source's columns, each with its PostgreSQL type in the metadata
        (the query is prepared, not run). Read once per request."""
        with self._lock:
            if self._schema is None:
                cursor = session.cursor()
                try:
                    self._schema = cursor.adbc_execute_schema(f"SELECT * FROM {self.from_sql} AS s")
                finally:
                    cursor.close()
            return self._schema

    def column_names(self, database: duckdb.DuckDBPyConnection | None = None) -> tuple[str, ...]:
        with self.pool.session() as session:
            return tuple(self.schema(session).names)

    def types(self, session: Session) -> dict[str, str]:
        """Each column's PostgreSQL type (``pg_type.typname``)."""
        return {field.name: pg_type(field) for field in self.schema(session)}

    def arrays(self, session: Session, columns: Sequence[str]) -> tuple[list[str], list[str]]:
        """Of ``columns``, the arrays declared with more than one dimension
        (``real[][]``), and those declared with none (a query source, a table
        made by CREATE TABLE AS): what the engine cannot read, and what its
        queries check as they read."""
        types = self.types(session)
        arrays = [c for c in columns if types.get(c, "").startswith("_")]
        if not arrays:
            return [], []
        declared: dict[str, int] = {}
        if self.table:
            names = ", ".join(sql_string(c) for c in arrays)
            cursor = session.cursor(copy=False)
            try:
                cursor.execute(
                    "SELECT attname, attndims FROM pg_attribute WHERE attrelid = "
                    f"{sql_string(self.table)}::regclass AND attname IN ({names})"
                )
                declared = dict(cursor.fetchall())
            finally:
                cursor.close()
        many = [c for c in arrays if declared.get(c, 0) > 1]
        unknown = [c for c in arrays if declared.get(c, 0) < 1]
        return many, unknown

    # --- plan B: the window into DuckDB ------------------------------------------------

    def read(
        self,
        database: duckdb.DuckDBPyConnection,
        columns: Sequence[str],
        timestamp_column: str,
        window: TimeWindow,
        *,
        session: Session | None = None,
        created: str | None = None,
        seek: Seek | None = None,
        counted: Callable[[pa.RecordBatch], None] | None = None,
        guarded: Sequence[str] = (),
    ) -> FetchedRows:
        """The rows of ``columns`` whose ``timestamp_column`` is in ``window``
        fetched into a table of ``database``. With ``created``, rows whose
        created timestamp is NULL are left out (they never match in Feast's
        postgres store). ``counted(batch)`` sees each fetched batch; the
        ``guarded`` arrays' largest dimension count is fetched too."""
        if session is None:
            with self.pool.session() as own:
                return self.read(
                    database, columns, timestamp_column, window, session=own,
                    created=created, seek=seek, counted=counted, guarded=guarded,
                )  # fmt: skip
        sql = self.fetch_sql(session, columns, timestamp_column, window, created, seek, guarded)
        name = f"__flightlab_pg_{next(_tables)}"
        # The request keeps the session for its other statements.
        stream = QueryStream(session, sql, batch_bytes=None, on_batch=counted, release=False)
        failed: list[BaseException] = []
        try:
            schema = stream.schema.append(pa.field(ROW_ID, pa.int64()))
            reader = pa.RecordBatchReader.from_batches(schema, _numbered(stream, failed))
            database.register(f"{name}_stream", reader)
            database.execute(f"CREATE TABLE {sql_name(name)} AS SELECT * FROM {name}_stream")
            database.unregister(f"{name}_stream")
        except duckdb.Error:
            # DuckDB's scan wraps the driver's error in its own text: raise the
            # driver's, which says what the database did (and is translated).
            if failed:
                raise failed[0] from None
            raise
        finally:
            stream.close()
        dimensions = None
        if guarded:
            found = database.execute(f"SELECT max({DIMENSIONS}) FROM {sql_name(name)}").fetchone()
            dimensions = found[0] if found else None
        return FetchedRows(name, self.description, dimensions)

    def fetch_sql(
        self,
        session: Session,
        columns: Sequence[str],
        timestamp_column: str,
        window: TimeWindow,
        created: str | None = None,
        seek: Seek | None = None,
        guarded: Sequence[str] = (),
    ) -> str:
        types = self.types(session)
        selected = ", ".join(
            _selected(c, types.get(c, ""), c == timestamp_column) for c in dict.fromkeys(columns)
        )
        if guarded:
            selected += f", {dimensions_sql(guarded)} AS {DIMENSIONS}"
        ts = f"s.{sql_name(timestamp_column)}"
        start = [f"{ts} >= {timestamp_literal(window.start)}"] if window.start else []
        end = [f"{ts} <= {timestamp_literal(window.end)}"] if window.end else []
        valid = [f"s.{sql_name(created)} IS NOT NULL"] if created else []
        if seek is None:
            where_sql = " AND ".join([*start, *end, *valid]) or "true"
            return f"SELECT {selected} FROM {self.from_sql} AS s WHERE {where_sql}"
        keys = pg_temp(seek.keys_table)
        same_key = " AND ".join(
            f"s.{sql_name(source)} = k.{sql_name(key)}" for source, key in seek.keys
        )
        earliest = timestamp_literal(seek.earliest)
        older = [*([same_key] if seek.keys else []), f"{ts} <= {earliest}", *start, *valid]
        order = [f"{ts} DESC", *([f"s.{sql_name(created)} DESC"] if created else [])]
        recent = [f"{ts} > {earliest}", *end, *valid]
        if seek.keys:
            recent.append(f"EXISTS (SELECT 1 FROM {keys} k WHERE {same_key})")
        # The latest rows at or before the earliest entity timestamp, per key
        # (ties kept), then every row after it of a key the entity rows hold.
        return (
            f"SELECT x.* FROM {keys} k CROSS JOIN LATERAL (SELECT {selected} "
            f"FROM {self.from_sql} AS s WHERE {' AND '.join(older)} "
            f"ORDER BY {', '.join(order)} FETCH FIRST 1 ROWS WITH TIES) x "
            f"UNION ALL SELECT {selected} FROM {self.from_sql} AS s "
            f"WHERE {' AND '.join(recent)}"
        )


def pg_temp(table: str) -> str:
    return f"pg_temp.{sql_name(table)}"


def _numbered(
    batches: Iterator[pa.RecordBatch], failed: list[BaseException]
) -> Iterator[pa.RecordBatch]:
    """Each batch with its rows' numbers (DuckDB's own ``rowid``, read from a
    subquery, trips its binder on some multi-join plans); an error reading
    ``batches`` is put in ``failed`` before it goes on."""
    start = 0
    try:
        for batch in batches:
            numbers = pa.array(range(start, start + batch.num_rows), pa.int64())
            start += batch.num_rows
            yield batch.append_column(ROW_ID, numbers)
    except Exception as exc:
        failed.append(exc)
        raise


@dataclass(frozen=True)
class FetchedRows:
    """A view's window, held in a table of the request's DuckDB database
    (with a column numbering its rows)."""

    table: str
    description: str
    dimensions: int | None = None  # the guarded arrays' most dimensions

    def read_sql(self, with_row_ids: bool = False) -> str:
        return sql_name(self.table)

    def row_id_columns(self) -> list[str]:
        return [ROW_ID]


def _selected(column: str, typname: str, is_timestamp: bool) -> str:
    """A fetched column: numeric read as double precision (what Feast's store
    answers with); an event timestamp without zone made an instant in the
    session's TimeZone, as PostgreSQL compares it with Feast's entity rows."""
    name = sql_name(column)
    if typname == NUMERIC:
        return f"CAST(s.{name} AS double precision) AS {name}"
    if is_timestamp and typname == TIMESTAMP_TYPES[0]:
        return f"CAST(s.{name} AS timestamptz) AS {name}"
    return f"s.{name}"


def timestamp_literal(moment: datetime) -> str:
    """An instant as PostgreSQL reads it (a naive one is UTC, as the engine's)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return f"{sql_string(moment.astimezone(UTC).isoformat(sep=' '))}::timestamptz"


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
