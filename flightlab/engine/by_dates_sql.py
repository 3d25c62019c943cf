"""The SQL of an entity-less retrieval (:mod:`~flightlab.engine.by_dates`).

Per view: one aggregate scan of the source (:func:`measure`), then its
winners, kept in a table of the request's database (:func:`keep_winners`);
then the cross product of the winners, in the dask store's row order
(:func:`answer_sql`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa
from feast.infra.offline_stores.offline_utils import DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL

from flightlab.engine.by_dates_types import ColumnType, converted, is_list
from flightlab.engine.reading import SourceRead, sql_name

EVENT_TIMESTAMP = DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
_P = "__flightlab_"  # the query's own columns


@dataclass
class ViewPart:
    """One feature view's part of the query, in source terms."""

    read: SourceRead  # the whole source: the dask store reads every row
    timestamp: str  # source columns
    created: str | None
    ttl: timedelta | None
    partition: list[str]  # output columns of the keys that group the winners
    columns: list[tuple[str, str, ColumnType]]  # (output column, source column, type)
    null_row: bool  # an empty source: one all-null row
    end_ns: int


def nanoseconds_since_epoch(moment: datetime) -> int:
    """``moment`` (aware) as nanoseconds since the epoch."""
    return _nanoseconds(moment - datetime(1970, 1, 1, tzinfo=UTC))


def _nanoseconds(delta: timedelta) -> int:
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1000


def measure(
    database: duckdb.DuckDBPyConnection,
    read: SourceRead,
    schema: pa.Schema,
    timestamp: str,
    ttl: timedelta | None,
    end_ns: int,
    columns: list[str],
) -> dict[str, int | bool]:
    """What the answer's types and errors depend on, in one scan of the
    source: its rows, those in the window, its timestamps, and which columns
    (and list values) hold a null anywhere."""
    window = in_window(f"epoch_ns({sql_name(timestamp)})", ttl, end_ns)
    aggregates = {
        "rows": "count(*)",
        "candidates": f"count(*) FILTER (WHERE {window})",
        "timestamps": f"count({sql_name(timestamp)})",
    }
    for column in columns:
        name = sql_name(column)
        aggregates[f"nulls:{column}"] = f"coalesce(bool_or({name} IS NULL), false)"
        if is_list(schema.field(column).type):
            aggregates[f"value_nulls:{column}"] = (
                f"coalesce(bool_or(len(list_filter({name}, x -> x IS NULL)) > 0), false)"
            )
    selected = ", ".join(f"{sql} AS {sql_name(key)}" for key, sql in aggregates.items())
    row = database.sql(f"SELECT {selected} FROM {read.read_sql()}").fetchone()
    return dict(zip(aggregates, row, strict=True))


def in_window(ts: str, ttl: timedelta | None, end_ns: int) -> str:
    # Rows with no event timestamp pass ("do not drop entity rows if one of
    # the sources returns NaNs"); the others must be in [end - ttl, end], or at
    # or before end without a TTL (None or zero).
    window = f"{ts} <= {end_ns}"
    if ttl and ttl.total_seconds() != 0:
        window += f" AND {ts} >= {end_ns - _nanoseconds(ttl)}"
    return f"({ts} IS NULL OR ({window}))"


# --- the winners, then the cross product ------------------------------------------------


def _winners_table(i: int) -> str:
    return sql_name(f"{_P}winners{i}")


def keep_winners(
    database: duckdb.DuckDBPyConnection,
    views: list[ViewPart],
    fields: list[tuple[str, ColumnType]],
) -> tuple[pa.Schema, int]:
    """Each view's winners in a table of the request's database; the answer's
    schema and size. An object column with no value in the answer (in its
    view's winners, or no rows at all) has the ``null`` type, as pyarrow
    infers it from pandas."""
    with_values: set[str] = set()
    total = 1
    for i, view in enumerate(views):
        database.execute(f"CREATE TEMP TABLE {_winners_table(i)} AS {_winners_sql(view)}")
        counts = [f"count({sql_name(out)})" for out, _, _ in view.columns]
        row = database.sql(
            f"SELECT {', '.join(['count(*)', *counts])} FROM {_winners_table(i)}"
        ).fetchone()
        total *= row[0]
        with_values.update(out for (out, _, _), n in zip(view.columns, row[1:], strict=True) if n)
    schema = pa.schema(
        pa.field(
            name,
            pa.null()
            if kind.object_column and (total == 0 or name not in with_values)
            else kind.type,
        )
        for name, kind in fields
    )
    return schema, total


def _winners_sql(view: ViewPart) -> str:
    """The view's latest row per value of its partition keys (null is a
    value): the greatest event timestamp, nulls lowest. Rows with one event
    timestamp come in no defined order from the dask store; this keeps the
    latest created (Feast's rule, nulls lowest), then the last read."""
    ids = view.read.row_id_columns()
    values = [
        f"{converted(sql_name(src), kind.conversion)} AS {sql_name(out)}"
        for out, src, kind in view.columns
    ]
    created = f"epoch_ns({sql_name(view.created)})" if view.created else "NULL::BIGINT"
    own = [
        f"epoch_ns({sql_name(view.timestamp)}) AS {_P}ts",
        f"{created} AS {_P}cr",
        *(f"{sql_name(c)} AS {_row(k)}" for k, c in enumerate(ids)),
    ]
    rows = f"SELECT {', '.join([*values, *own])} FROM {view.read.read_sql(with_row_ids=True)}"
    if view.null_row:  # an empty source joins as one row of nulls (a left join)
        return f"SELECT w.* FROM (SELECT 1) AS one LEFT JOIN ({rows}) AS w ON false"
    partition = (
        f"PARTITION BY {', '.join(map(sql_name, view.partition))} " if view.partition else ""
    )
    ranking = [f"{_P}ts DESC NULLS LAST", f"{_P}cr DESC NULLS LAST"]
    ranking += [f"{_row(k)} DESC" for k in range(len(ids))]
    return (
        f"SELECT * FROM ({rows}) WHERE {in_window(f'{_P}ts', view.ttl, view.end_ns)} "
        f"QUALIFY row_number() OVER ({partition}ORDER BY {', '.join(ranking)}) = 1"
    )


def _row(k: int) -> str:
    return f"{_P}row{k}"


def answer_sql(views: list[ViewPart], end_ns: int) -> str:
    """The cross product of the winners, stamped ``end``, in the dask store's
    order: by the last view's event timestamp, nulls first; ties as a stable
    sort leaves them (by created timestamp, then in the order the rows had
    before that view's join, then as read)."""
    selected = [f"make_timestamp_ns({end_ns}) AS {sql_name(EVENT_TIMESTAMP)}"]
    order: list[str] = []
    for i, view in enumerate(views):
        w = f"w{i}"
        selected += [f"{w}.{sql_name(out)}" for out, _, _ in view.columns]
        rows = [f"{w}.{_row(k)}" for k in range(len(view.read.row_id_columns()))]
        order = [f"{w}.{_P}ts ASC NULLS FIRST", f"{w}.{_P}cr ASC NULLS FIRST", *order, *rows]
    tables = " CROSS JOIN ".join(f"{_winners_table(i)} AS w{i}" for i in range(len(views)))
    return f"SELECT {', '.join(selected)} FROM {tables} ORDER BY {', '.join(order)}"
