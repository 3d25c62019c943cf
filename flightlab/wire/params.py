"""How one parameter value travels: as a one-column Arrow table of a declared kind.

A request field is declared with :func:`param` and a :class:`Kind`;
:func:`encode_value` turns a value into the table a client puts, and
:func:`decode_value` turns a staged table back into the value, naming the
parameter in every error.
"""

from __future__ import annotations

import enum
from dataclasses import field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from flightlab.wire.flight_errors import MalformedParameterError

# Timestamps travel as microseconds in UTC: the precision Feast's SQL-backed
# stores keep, and a naive datetime is read as UTC, as Feast does.
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")


class Kind(enum.Enum):
    """How a parameter is encoded as a one-column (or, for TABLE, any) table."""

    TABLE = "table"  # an Arrow table, streamed as it is
    STRING = "string"  # one row
    STRING_LIST = "string_list"  # one row per element
    BOOL = "bool"
    TIMESTAMP = "timestamp"
    BYTES = "bytes"
    BYTES_LIST = "bytes_list"  # one row per element


_ARROW_TYPE = {
    Kind.STRING: pa.string(),
    Kind.STRING_LIST: pa.string(),
    Kind.BOOL: pa.bool_(),
    Kind.TIMESTAMP: TIMESTAMP_TYPE,
    Kind.BYTES: pa.binary(),
    Kind.BYTES_LIST: pa.binary(),
}
_LIST_KINDS = (Kind.STRING_LIST, Kind.BYTES_LIST)


def param(kind: Kind, *, required: bool = True, default: Any = None) -> Any:
    """Declare a request field as a wire parameter."""
    meta = {"kind": kind, "required": required}
    if required:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


def encode_value(name: str, kind: Kind, value: Any) -> pa.Table | pa.RecordBatchReader:
    """A parameter value as the table that carries it."""
    if kind is Kind.TABLE:
        # A reader streams a table too large to hold twice (sent once).
        if not isinstance(value, pa.Table | pa.RecordBatchReader):
            raise MalformedParameterError(f"parameter {name!r} must be an Arrow table")
        return value
    if kind is Kind.TIMESTAMP:
        value = _as_utc(value)
    rows = list(value) if kind in _LIST_KINDS else [value]
    return pa.table({name: pa.array(rows, type=_ARROW_TYPE[kind])})


def decode_value(name: str, kind: Kind, table: pa.Table) -> Any:
    """The value a parameter table carries, checked against its kind."""
    if kind is Kind.TABLE:
        return table
    if table.num_columns != 1:
        raise MalformedParameterError(
            f"parameter {name!r} must be a one-column table, got columns {table.column_names}"
        )
    column = table.column(0)
    if table.column_names[0] != name:
        raise MalformedParameterError(
            f"parameter {name!r} arrived in a column named {table.column_names[0]!r}"
        )
    expected = _ARROW_TYPE[kind]
    if not _compatible(column.type, expected):
        raise MalformedParameterError(
            f"parameter {name!r} must be of Arrow type {expected}, got {column.type}"
        )
    if kind in _LIST_KINDS:
        values = column.to_pylist()
        if any(v is None for v in values):
            raise MalformedParameterError(f"parameter {name!r} holds a null element")
        return tuple(values)
    if table.num_rows != 1:
        raise MalformedParameterError(
            f"parameter {name!r} is a single value: send one row, got {table.num_rows}"
        )
    if kind is Kind.TIMESTAMP:
        return _timestamp_value(name, column)
    value = column.to_pylist()[0]
    if isinstance(value, str) and kind is Kind.BYTES:
        value = value.encode()
    return value


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(actual)
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_binary(expected):
        return pa.types.is_binary(actual) or pa.types.is_large_binary(actual)
    return actual == expected


def _timestamp_value(name: str, column: pa.ChunkedArray) -> datetime | None:
    if column.type.tz is None:
        column = column.cast(pa.timestamp(column.type.unit, tz="UTC"))
    try:
        column = column.cast(TIMESTAMP_TYPE, safe=False)
    except pa.ArrowInvalid as exc:
        raise MalformedParameterError(f"parameter {name!r}: {exc}") from None
    value = column.to_pylist()[0]
    return value.astimezone(UTC) if value is not None else None


def _as_utc(value: datetime) -> datetime:
    if not isinstance(value, datetime):
        raise MalformedParameterError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def decode_text(raw: bytes, what: str) -> str:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    except UnicodeDecodeError:
        raise MalformedParameterError(f"the {what} is not UTF-8 text") from None
    if not text:
        raise MalformedParameterError(f"the {what} is empty")
    return text
