"""The SQL the engine runs: one DuckDB query per request.

A historical retrieval is the entity rows ``ASOF LEFT JOIN``-ed with each
feature view in turn. DuckDB's ASOF join picks, per entity row, the source row
with the greatest event timestamp at or before the entity's; the rules Feast's
duckdb store applies on top of that are spelled out where they are built: the
created-timestamp tie-break (:func:`_candidates`), the TTL (:func:`_matched_row`)
and ``field_mapping`` (:func:`_renamed_columns`).

The joins carry row ids, not features: each ASOF join finds *which* source row
an entity row gets (by join keys and timestamps alone), and the features are
fetched afterwards by row id. Sorting wide rows (MNIST's 28 arrays) for the
ASOF join is what costs; this halves the time there and is no slower on
narrow views.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flightlab.engine.reading import SourceRead, sql_name, sql_string

ENTITY_TABLE = "flightlab_entity_rows"
_TS = "__flightlab_ts"


@dataclass(frozen=True)
class ViewQuery:
    """One feature view's part of a retrieval, in source terms."""

    source: SourceRead
    source_columns: tuple[str, ...]  # as the parquet files name them
    field_mapping: tuple[tuple[str, str], ...]  # source column -> feature view column
    timestamp_field: str
    created_timestamp_column: str | None
    join_keys: tuple[tuple[str, str], ...]  # view column -> entity column
    features: tuple[tuple[str, str], ...]  # view column -> output column
    ttl: timedelta | None
    # Feast's postgres store's rule: a matched row tied with others on keys,
    # event and created timestamps gives one output row per tied row.
    every_tie: bool = False


def historical_sql(entity_columns: list[str], event_timestamp: str, views: list[ViewQuery]) -> str:
    """Every entity row, in the entity table's columns, then each view's features."""
    ctes = []
    matched = [f"e.{sql_name(c)}" for c in entity_columns]
    asof_joins = []
    for i, view in enumerate(views):
        ctes.append(f"c{i} AS ({_candidates(view)})")
        ctes.append(f"f{i} AS ({_features_by_row(view)})")
        matched += _matched_row(i, view, event_timestamp)
        conditions = [
            f"e.{sql_name(entity)} = c{i}.{sql_name(_key_alias(k))}"
            for k, (_, entity) in enumerate(view.join_keys)
        ]
        conditions.append(f"e.{sql_name(event_timestamp)} >= c{i}.{_TS}")
        asof_joins.append(f"ASOF LEFT JOIN c{i} ON {' AND '.join(conditions)}")
    ctes.append(
        f"matched AS (SELECT {', '.join(matched)} FROM {ENTITY_TABLE} AS e {' '.join(asof_joins)})"
    )
    selected = [f"m.{sql_name(c)}" for c in entity_columns]
    fetches = []
    for i, view in enumerate(views):
        selected += [f"f{i}.{sql_name(out)}" for _, out in view.features]
        same_row = " AND ".join(
            f"m.{_row_id(i, column)} = f{i}.{_row_id(0, column)}"
            for column in view.source.row_id_columns()
        )
        fetches.append(f"LEFT JOIN f{i} ON {same_row}")
    return (
        f"WITH {', '.join(ctes)} SELECT {', '.join(selected)} FROM matched AS m {' '.join(fetches)}"
    )


def _candidates(view: ViewQuery) -> str:
    """The rows an entity row may get: keys, the event timestamp (in UTC) and row id.

    When rows of one key share an event timestamp, Feast's duckdb store keeps
    the one with the greatest created timestamp: keep only that one here, so
    that the ASOF join has nothing left to choose between.
    """
    columns = dict(_renamed_columns(view))
    keys = [
        f"{columns[view_col]} AS {sql_name(_key_alias(k))}"
        for k, (view_col, _) in enumerate(view.join_keys)
    ]
    timestamp = f"CAST({columns[view.timestamp_field]} AS TIMESTAMPTZ)"
    row_id = [f"{sql_name(c)} AS {_row_id(0, c)}" for c in view.source.row_id_columns()]
    query = (
        f"SELECT {', '.join([*keys, f'{timestamp} AS {_TS}', *row_id])} "
        f"FROM {_filtered(view.source)}"
    )
    created = view.created_timestamp_column
    if created:
        partition = [columns[view_col] for view_col, _ in view.join_keys] + [timestamp]
        query += (
            f" QUALIFY row_number() OVER (PARTITION BY {', '.join(partition)} "
            f"ORDER BY CAST({columns[created]} AS TIMESTAMPTZ) DESC NULLS LAST) = 1"
        )
    return query


def _matched_row(i: int, view: ViewQuery, event_timestamp: str) -> list[str]:
    """The row id an entity row got from view ``i``. With a TTL set (and not
    zero), a row older than the entity timestamp minus the TTL does not count:
    no row, so null features."""
    ids = [(f"c{i}.{_row_id(0, c)}", _row_id(i, c)) for c in view.source.row_id_columns()]
    if not view.ttl:
        return [f"{value} AS {name}" for value, name in ids]
    window = f"to_microseconds({_microseconds(view.ttl)})"
    fresh = f"c{i}.{_TS} >= e.{sql_name(event_timestamp)} - {window}"
    return [f"CASE WHEN {fresh} THEN {value} END AS {name}" for value, name in ids]


def _features_by_row(view: ViewQuery) -> str:
    columns = dict(_renamed_columns(view))
    row_id = [f"{sql_name(c)} AS {_row_id(0, c)}" for c in view.source.row_id_columns()]
    features = [f"{columns[view_col]} AS {sql_name(out)}" for view_col, out in view.features]
    if not view.every_tie:
        return f"SELECT {', '.join([*row_id, *features])} FROM {_filtered(view.source)}"
    # Each row id, with the features of every row tied with it.
    source = f"(SELECT * FROM {_filtered(view.source)})"
    tied = [view_col for view_col, _ in view.join_keys] + [view.timestamp_field]
    tied += [view.created_timestamp_column] if view.created_timestamp_column else []
    same = " AND ".join(f"w.{columns[c]} = t.{columns[c]}" for c in tied)
    ids = [f"w.{sql_name(c)} AS {_row_id(0, c)}" for c in view.source.row_id_columns()]
    values = [f"t.{columns[view_col]} AS {sql_name(out)}" for view_col, out in view.features]
    return f"SELECT {', '.join([*ids, *values])} FROM {source} AS w JOIN {source} AS t ON {same}"


def _filtered(source: SourceRead) -> str:
    """The source with its row ids, and its own ``row_filter`` where it has one
    (a superset bound on stored columns that lets DuckDB skip row groups)."""
    row_filter = getattr(source, "row_filter", None)
    where = f" WHERE {row_filter}" if row_filter else ""
    return f"{source.read_sql(with_row_ids=True)}{where}"


def _row_id(i: int, column: str) -> str:
    return sql_name(f"__flightlab_{column}{i}")


def _renamed_columns(view: ViewQuery) -> list[tuple[str, str]]:
    """(view column, SQL naming it in the source) after ``field_mapping``, which
    renames source columns; entries for a column the source lacks are ignored."""
    mapping = dict(view.field_mapping)
    return [(mapping.get(column, column), sql_name(column)) for column in view.source_columns]


def _key_alias(index: int) -> str:
    return f"__flightlab_key{index}"


def pull_sql(
    source: SourceRead,
    columns: list[str],
    timestamp_field: str,
    created_timestamp_column: str | None,
    start_date: datetime | None,
    end_date: datetime | None,
    latest_by: list[str] | None,
) -> str:
    """The source's rows in ``[start_date, end_date]`` (either bound optional);
    with ``latest_by`` (the join keys), only the latest row of each key."""
    query = f"SELECT {', '.join(map(sql_name, columns))} FROM {source.read_sql()}"
    event_time = f"CAST({sql_name(timestamp_field)} AS TIMESTAMP)"
    row_filter = getattr(source, "row_filter", None)  # see _filtered
    bounds = [row_filter] if row_filter else []
    if start_date is not None:
        bounds.append(f"{event_time} >= {_timestamp_literal(start_date)}")
    if end_date is not None:
        bounds.append(f"{event_time} <= {_timestamp_literal(end_date)}")
    if bounds:
        query += " WHERE " + " AND ".join(bounds)
    if latest_by is not None:
        order = [f"{sql_name(timestamp_field)} DESC NULLS LAST"]
        if created_timestamp_column:
            order.append(f"{sql_name(created_timestamp_column)} DESC NULLS LAST")
        partition = f"PARTITION BY {', '.join(map(sql_name, latest_by))} " if latest_by else ""
        query += f" QUALIFY row_number() OVER ({partition}ORDER BY {', '.join(order)}) = 1"
    return query


def _timestamp_literal(moment: datetime) -> str:
    # Compared as naive UTC, as Feast's duckdb store compares them.
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return f"TIMESTAMP {sql_string(moment.isoformat(sep=' '))}"


def _microseconds(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
