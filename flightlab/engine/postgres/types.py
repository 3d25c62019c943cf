"""The types of Feast's postgres store's answers, and the columns the engine can give them.

Feast's store reads a result with psycopg and types each column by its
PostgreSQL type (``feast.type_map.pg_type_code_to_arrow``): ``smallint`` is
int32, ``numeric`` double, ``date`` and both timestamps a naive
``timestamp[us]`` in UTC. Entity rows sent as a table go through a table it
creates from their pandas dtypes first (``arrow_to_pg_type``): a float32
column comes back float64, an int16 one int32. :func:`feature_type` and
:func:`entity_type` give those types, or None for a type the engine leaves to
Feast's store (uuid, json, interval, ...: Feast's store fails on most of
them, with its own error); :func:`cast_batch` casts a result batch to them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from flightlab.engine.reading import sql_name
from flightlab.errors import OfflineStoreQueryError

TIMESTAMP = pa.timestamp("us")
_TYPE_KEY = b"POSTGRESQL:type"

# PostgreSQL type (pg_type.typname) -> the Arrow type Feast's store answers with.
_FEATURE_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "bytea": pa.binary(),
    "int2": pa.int32(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "numeric": pa.float64(),
    "text": pa.string(),
    "varchar": pa.string(),
    "bpchar": pa.string(),
    "date": TIMESTAMP,
    "timestamp": TIMESTAMP,
    "timestamptz": TIMESTAMP,
    "_bool": pa.list_(pa.bool_()),
    "_bytea": pa.list_(pa.binary()),
    "_int2": pa.list_(pa.int32()),
    "_int4": pa.list_(pa.int32()),
    "_int8": pa.list_(pa.int64()),
    "_float4": pa.list_(pa.float32()),
    "_float8": pa.list_(pa.float64()),
    "_text": pa.list_(pa.string()),
    "_bpchar": pa.list_(pa.string()),
}
# Read as double precision in PostgreSQL: ADBC gives numeric as text.
NUMERIC = "numeric"
TIMESTAMP_TYPES = ("timestamp", "timestamptz")

# Arrow type of an uploaded entity column -> Feast's answer type (None: its
# store cannot take the column; the request goes to it for its own error).
_ENTITY_TYPES: dict[pa.DataType, pa.DataType] = {
    pa.int16(): pa.int32(),
    pa.int32(): pa.int32(),
    pa.int64(): pa.int64(),
    pa.uint8(): pa.int32(),
    pa.uint16(): pa.int32(),
    pa.uint32(): pa.int64(),
    pa.float32(): pa.float64(),
    pa.float64(): pa.float64(),
    pa.bool_(): pa.bool_(),
    pa.string(): pa.string(),
}


def pg_type(field: pa.Field) -> str:
    """The PostgreSQL type ADBC names in a result field's metadata ("" if none)."""
    return (field.metadata or {}).get(_TYPE_KEY, b"").decode()


def feature_type(typname: str) -> pa.DataType | None:
    """Feast's answer type for a PostgreSQL column type, or None."""
    return _FEATURE_TYPES.get(typname)


def entity_type(kind: pa.DataType) -> pa.DataType | None:
    """Feast's answer type for an uploaded entity column of Arrow type ``kind``."""
    if pa.types.is_timestamp(kind):
        return TIMESTAMP
    return _ENTITY_TYPES.get(kind)


def upload_type(kind: pa.DataType) -> pa.DataType:
    """The type an entity key column is uploaded as: the column type Feast's
    store gives it (float32 is double precision there)."""
    answer = entity_type(kind)
    if answer is None or pa.types.is_timestamp(kind):
        return kind
    return answer


def cast_batch(batch: pa.RecordBatch, schema: pa.Schema, uploaded: int = 0) -> pa.RecordBatch:
    """``batch`` (columns in ``schema``'s order) in ``schema``'s types; its
    first ``uploaded`` columns are entity columns Feast's store uploads."""
    columns = [
        cast_array(array, field.type, i < uploaded)
        for i, (array, field) in enumerate(zip(batch.columns, schema, strict=True))
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def cast_array(array: pa.Array, target: pa.DataType, uploaded: bool = False) -> pa.Array:
    if isinstance(array.type, pa.ExtensionType):  # numeric (text), read as is
        array = array.storage
    if pa.types.is_timestamp(array.type) and array.type.tz is not None:
        array = array.cast(pa.timestamp(array.type.unit))  # the UTC wall time
    if uploaded and pa.types.is_floating(array.type):
        # Feast's store replaces NaN with NULL in the rows it uploads.
        array = pc.if_else(pc.is_nan(array), pa.scalar(None, array.type), array)
    if array.type != target:
        array = array.cast(target)
    return array


# A 2-D array arrives through ADBC flattened, with the type of a 1-D one;
# Feast's store fails on it. Where the column's declaration does not say
# "one dimension", the engine's query also reads the largest dimension count
# of its arrays, and a result with more than one is not answered.
DIMENSIONS = "__flightlab_ndims"


def dimensions_sql(columns: Sequence[str], alias: str = "s") -> str:
    arrays = ", ".join(f"array_ndims({alias}.{sql_name(c)})" for c in columns)
    return f"GREATEST({arrays})"


def check_dimensions(dimensions: pa.Array, where: str) -> None:
    largest = pc.max(dimensions).as_py()
    if largest is not None and largest > 1:
        raise OfflineStoreQueryError(
            f"{where} holds arrays of {largest} dimensions, which Feast's postgres store "
            "cannot read either; flightlab's engine reads arrays of one dimension"
        )


def checked_dimensions(
    batches: Iterator[pa.RecordBatch], wheres: Sequence[str]
) -> Iterator[pa.RecordBatch]:
    """``batches`` whose last ``len(wheres)`` columns are dimension counts (of
    the arrays ``wheres`` names), checked, then dropped."""
    guards = len(wheres)
    for batch in batches:
        if guards:
            width = batch.num_columns - guards
            for where, column in zip(wheres, batch.columns[width:], strict=True):
                check_dimensions(column, where)
            batch = batch.select(range(width))
        yield batch
