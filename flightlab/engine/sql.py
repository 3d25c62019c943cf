"""The SQL the engine runs: one DuckDB query per request.

A historical retrieval is the entity rows ``ASOF LEFT JOIN``-ed with each
feature view in turn. DuckDB's ASOF join picks, per entity row, the source row
with the greatest event timestamp at or before the entity's; the rules Feast's
duckdb store applies on top of that are spelled out where they are built:
the created-timestamp tie-break (:func:`_view_rows`), the TTL
(:func:`_feature_columns`) and ``field_mapping`` (:func:`_renamed_columns`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flightlab.engine.sources import ParquetSource, sql_name, sql_string

ENTITY_TABLE = "flightlab_entity_rows"
_TS = "__flightlab_ts"


@dataclass(frozen=True)
class ViewQuery:
    """One feature view's part of a retrieval, in source terms."""

    source: ParquetSource
    source_columns: tuple[str, ...]  # as the parquet files name them
    field_mapping: tuple[tuple[str, str], ...]  # source column -> feature view column
    timestamp_field: str
    created_timestamp_column: str | None
    join_keys: tuple[tuple[str, str], ...]  # view column -> entity column
    features: tuple[tuple[str, str], ...]  # view column -> output column
    ttl: timedelta | None


def historical_sql(entity_columns: list[str], event_timestamp: str, views: list[ViewQuery]) -> str:
    """Every entity row, in the entity table's columns, then each view's features."""
    ctes = [f"v{i} AS ({_view_rows(view)})" for i, view in enumerate(views)]
    selected = [f"e.{sql_name(c)}" for c in entity_columns]
    joins = []
    for i, view in enumerate(views):
        selected += _feature_columns(f"v{i}", view, event_timestamp)
        conditions = [
            f"e.{sql_name(entity)} = v{i}.{sql_name(_key_alias(k))}"
            for k, (_, entity) in enumerate(view.join_keys)
        ]
        conditions.append(f"e.{sql_name(event_timestamp)} >= v{i}.{_TS}")
        joins.append(f"ASOF LEFT JOIN v{i} ON {' AND '.join(conditions)}")
    with_clause = f"WITH {', '.join(ctes)} " if ctes else ""
    return f"{with_clause}SELECT {', '.join(selected)} FROM {ENTITY_TABLE} AS e {' '.join(joins)}"


def _view_rows(view: ViewQuery) -> str:
    """A view's candidate rows: keys, the event timestamp (in UTC) and features.

    When rows of one key share an event timestamp, Feast's duckdb store keeps
    the one with the greatest created timestamp: keep only that one here, so
    that the ASOF join has nothing left to choose between.
    """
    columns = dict(_renamed_columns(view))
    keys = [
        f"{columns[view_col]} AS {sql_name(_key_alias(k))}"
        for k, (view_col, _) in enumerate(view.join_keys)
    ]
    features = [f"{columns[view_col]} AS {sql_name(out)}" for view_col, out in view.features]
    timestamp = f"CAST({columns[view.timestamp_field]} AS TIMESTAMPTZ)"
    query = (
        f"SELECT {', '.join([*keys, f'{timestamp} AS {_TS}', *features])} "
        f"FROM {view.source.read_sql()}"
    )
    created = view.created_timestamp_column
    if created:
        partition = [columns[view_col] for view_col, _ in view.join_keys] + [timestamp]
        query += (
            f" QUALIFY row_number() OVER (PARTITION BY {', '.join(partition)} "
            f"ORDER BY CAST({columns[created]} AS TIMESTAMPTZ) DESC NULLS LAST) = 1"
        )
    return query


def _feature_columns(alias: str, view: ViewQuery, event_timestamp: str) -> list[str]:
    """The view's output columns; with a TTL set (and not zero), a row older
    than the entity timestamp minus the TTL does not count: null instead."""
    if not view.ttl:
        return [f"{alias}.{sql_name(out)}" for _, out in view.features]
    window = f"to_microseconds({_microseconds(view.ttl)})"
    fresh = f"{alias}.{_TS} >= e.{sql_name(event_timestamp)} - {window}"
    return [
        f"CASE WHEN {fresh} THEN {alias}.{sql_name(out)} END AS {sql_name(out)}"
        for _, out in view.features
    ]


def _renamed_columns(view: ViewQuery) -> list[tuple[str, str]]:
    """(view column, SQL naming it in the source) after ``field_mapping``, which
    renames source columns; entries for a column the source lacks are ignored."""
    mapping = dict(view.field_mapping)
    return [(mapping.get(column, column), sql_name(column)) for column in view.source_columns]


def _key_alias(index: int) -> str:
    return f"__flightlab_key{index}"


def pull_sql(
    source: ParquetSource,
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
    bounds = []
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
