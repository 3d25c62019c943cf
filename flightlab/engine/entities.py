"""The uploaded entity rows, made ready for the join without leaving Arrow."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
from feast.errors import EntityTimestampInferenceException
from feast.infra.offline_stores.offline_utils import DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL

from flightlab.errors import MalformedEntityDataError

ENTITY_TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")


def event_timestamp_column(schema: pa.Schema) -> str:
    """Feast's rule: ``event_timestamp`` if there is one, else the only
    timestamp column, else Feast's own error."""
    if DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL in schema.names:
        return DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
    timestamps = [f.name for f in schema if pa.types.is_timestamp(f.type)]
    if len(timestamps) == 1:
        return timestamps[0]
    raise EntityTimestampInferenceException(DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL)


def prepared_entity_rows(table: pa.Table) -> tuple[pa.Table, str]:
    """``table`` with every timestamp column in microseconds, UTC, and the
    name of its event timestamp column.

    Feast makes every datetime column of an entity frame UTC (a naive one is
    read as UTC), parses an event timestamp given as text, and its duckdb
    store keeps microseconds (finer values are floored). The other columns
    are passed on as they are: no copy is made of them.
    """
    if table.num_columns == 0:
        raise MalformedEntityDataError("the entity data has no columns")
    if len(set(table.column_names)) != table.num_columns:
        raise MalformedEntityDataError(
            f"the entity data has duplicate column names: {table.column_names}"
        )
    event_timestamp = event_timestamp_column(table.schema)
    columns = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if name == event_timestamp and not pa.types.is_timestamp(column.type):
            column = _parsed_timestamps(name, column)
        if pa.types.is_timestamp(column.type):
            column = _as_utc_microseconds(column)
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names), event_timestamp


def _parsed_timestamps(name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    # As Feast reads them: pandas' parser, anything without a zone in UTC.
    try:
        parsed = pd.to_datetime(column.to_pandas(), utc=True)
    except (ValueError, TypeError) as exc:
        raise MalformedEntityDataError(
            f"the entity column {name!r} holds values that are not timestamps: {exc}"
        ) from None
    return pa.chunked_array([pa.array(parsed)])


def _as_utc_microseconds(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if column.type == ENTITY_TIMESTAMP_TYPE:
        return column
    # Arrow keeps instants in UTC whatever the zone: re-labelling is exact.
    column = column.cast(pa.timestamp(column.type.unit, tz="UTC"))
    return column.cast(ENTITY_TIMESTAMP_TYPE, safe=False)
