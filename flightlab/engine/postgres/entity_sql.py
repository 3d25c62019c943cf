"""``entity_df`` given as SQL: the entity rows never leave PostgreSQL.

Feast's postgres store runs ``CREATE TABLE ... AS (<the SQL>)`` and joins
from that table. The engine does the same into a TEMP table of its session,
then runs plan A from it: the entity rows are already where plan A's join
runs, and fetching them would move them twice. The entity columns come back
in the types of the query's columns, as the store's answer has them; the
event timestamp is the ``event_timestamp`` column.
"""

from __future__ import annotations

import itertools

import pyarrow as pa

from flightlab.engine.postgres import pit
from flightlab.engine.postgres.connections import Session
from flightlab.engine.postgres.source import pg_temp
from flightlab.engine.postgres.types import TIMESTAMP_TYPES, feature_type, pg_type
from flightlab.engine.postgres.views import PgView
from flightlab.engine.reading import sql_name

EVENT_TIMESTAMP = "event_timestamp"
_tables = itertools.count()


def entity_schema(session: Session, entity_sql: str) -> pa.Schema:
    """The query's columns, with their PostgreSQL types (prepared, not run)."""
    cursor = session.cursor()
    try:
        return cursor.adbc_execute_schema(f"SELECT * FROM ({entity_sql}) AS sub")
    finally:
        cursor.close()


def event_timestamp(schema: pa.Schema) -> str | None:
    """Feast's choice of the event timestamp column: ``event_timestamp``
    (None: its store raises). Its store would take the only timestamp column
    too, but it reads the query's column types from an empty result, in which
    pandas sees no timestamp column: its rule, in practice, is the name."""
    for field in schema:
        if field.name == EVENT_TIMESTAMP and pg_type(field) in TIMESTAMP_TYPES:
            return EVENT_TIMESTAMP
    return None


def entity_fields(schema: pa.Schema) -> list[pa.Field] | None:
    """The entity columns' answer types (None: one the engine cannot type)."""
    fields = []
    for field in schema:
        kind = feature_type(pg_type(field))
        if kind is None:
            return None
        fields.append(pa.field(field.name, kind))
    return fields


def create_entity_table(session: Session, entity_sql: str) -> str:
    name = f"flightlab_entity_sql_{next(_tables)}"
    session.execute(f"CREATE TEMP TABLE {sql_name(name)} AS SELECT * FROM ({entity_sql}) AS sub")
    session.execute(f"ANALYZE {pg_temp(name)}")
    return name


def keys_collide(session: Session, table: str, views: list[PgView], timestamp: str) -> bool:
    """Feast's key-text collision (see ``views.key_texts_collide``), found in SQL."""
    for view in views:
        keys = list(dict.fromkeys(view.entity_columns))
        if len(keys) < 2:
            continue
        text = " || ".join(f"CAST({sql_name(k)} AS VARCHAR)" for k in keys)
        row = ", ".join(sql_name(k) for k in keys)
        cursor = session.cursor(copy=False)
        try:
            cursor.execute(
                f"SELECT 1 FROM {pg_temp(table)} WHERE ({text}) IS NOT NULL "
                f"GROUP BY {text}, {sql_name(timestamp)} HAVING count(DISTINCT ({row})) > 1 LIMIT 1"
            )
            if cursor.fetchall():
                return True
        finally:
            cursor.close()
    return False


def pit_sql(table: str, schema: pa.Schema, timestamp: str, views: list[PgView], session: Session):
    types = [view.source.types(session) for view in views]
    return pit.pit_sql(table, schema.names, timestamp, views, types)
