"""``pull_latest_from_table_or_query`` and ``pull_all_from_table_or_query``
over a ``PostgreSQLSource``: Feast's postgres store's own SELECT, streamed.

The query is the store's, clause for clause (its ``BETWEEN`` bounds written
as it writes them, the same ``ROW_NUMBER`` order, where NULLs sort first, the
``__dummy_id`` column of a pull without join keys), run with ADBC and read as
Arrow batches, cast to the types the store answers with. What the store
cannot run (no dates where its SQL needs them, no feature columns), and
columns it cannot type, go to the store itself.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa

from flightlab.engine.postgres.connections import Session
from flightlab.engine.postgres.source import PostgresSource
from flightlab.engine.postgres.types import DIMENSIONS, dimensions_sql, feature_type
from flightlab.engine.reading import sql_name
from flightlab.errors import OfflineStoreQueryError

DUMMY_ID = "__dummy_id"  # feast.feature_view.DUMMY_ENTITY_ID, with DUMMY_ENTITY_VAL ''


def pull_sql(
    source: PostgresSource,
    join_keys: list[str],
    features: list[str],
    timestamp: str,
    created: str | None,
    start: datetime | None,
    end: datetime | None,
    latest: bool,
    guarded: list[str] | None = None,
) -> str | None:
    """The store's query, or None where the store's own SQL would fail;
    ``guarded`` arrays add their largest dimension count as a last column."""
    timestamps = [timestamp, *([created] if created else [])]
    columns = [*join_keys, *features, *timestamps]
    if not features:
        return None  # "all columns": the store's DISTINCT ON form
    if latest:
        if start is None or end is None:
            return None  # the store writes 'None'::timestamptz
        partition = ", ".join(f"a.{sql_name(c)}" for c in join_keys)
        order = ", ".join(f"a.{sql_name(c)} DESC" for c in timestamps)
        dummy = f", '' AS {DUMMY_ID}" if not join_keys else ""
        inner = [f"a.{sql_name(c)}" for c in columns]
        outer = ", ".join(f"b.{sql_name(c)}" for c in columns) + dummy
        if guarded:
            inner.append(f"{dimensions_sql(guarded, 'a')} AS {DIMENSIONS}")
            outer += f", b.{DIMENSIONS}"
        return (
            f"SELECT {outer} FROM (SELECT {', '.join(inner)}, ROW_NUMBER() OVER("
            f"{'PARTITION BY ' + partition + ' ' if partition else ''}ORDER BY {order}) "
            f"AS _feast_row FROM {source.from_sql} a WHERE a.{sql_name(timestamp)} BETWEEN "
            f"'{start}'::timestamptz AND '{end}'::timestamptz) b WHERE _feast_row = 1"
        )
    bounds = _timestamp_filter(start, end, timestamp)
    if bounds is None:
        return None  # the store writes "WHERE" with nothing after it
    selected = [f"paftoq_alias.{sql_name(c)}" for c in columns]
    if guarded:
        selected.append(f"{dimensions_sql(guarded, 'paftoq_alias')} AS {DIMENSIONS}")
    return f"SELECT {', '.join(selected)} FROM {source.from_sql} AS paftoq_alias WHERE {bounds}"


def _timestamp_filter(start: datetime | None, end: datetime | None, timestamp: str) -> str | None:
    # As feast's get_timestamp_filter_sql(tz=utc, cast_style="timestamptz", " ").
    def cast(moment: datetime) -> str:
        return f"'{moment.astimezone(UTC).isoformat(sep=' ')}'::timestamptz"

    column = sql_name(timestamp)
    if start and end:
        return f"{column} BETWEEN {cast(start)} AND {cast(end)}"
    if start:
        return f"{column} >= {cast(start)}"
    if end:
        return f"{column} <= {cast(end)}"
    return None


def answer_schema(
    session: Session, source: PostgresSource, columns: list[str], dummy: bool, where_text: str
) -> pa.Schema | None:
    """The pull's answer types; None when a column has a type the engine
    leaves to Feast's store."""
    types = source.types(session)
    missing = [c for c in columns if c not in types]
    if missing:
        raise OfflineStoreQueryError(
            f"the pull reads column {', '.join(map(repr, missing))}, which "
            f"{source.description} in the offline store's database {where_text} does not "
            f"have; its columns are {list(types)}"
        )
    fields = []
    for column in columns:
        kind = feature_type(types[column])
        if kind is None:
            return None
        fields.append(pa.field(column, kind))
    if dummy:
        fields.append(pa.field(DUMMY_ID, pa.string()))
    return pa.schema(fields)
