"""The Arrow types of an entity-less answer, as Feast's file (dask) store gives them.

The dask store reads a source into pandas with pyarrow (numpy dtypes, strings
as Python objects, nullable extension dtypes only where the file's pandas
metadata names them) and answers with ``pyarrow.Table.from_pandas`` of the
frame it built. So an answer's types depend on the source's Arrow schema as
pyarrow reads it, and on its data: an integer column that holds a null
anywhere in the source comes back as ``double``, and an object column
(string, binary, list, a boolean with nulls) that holds no value in the
answer comes back as the ``null`` type. :func:`dask_type` says which, from
what :mod:`~flightlab.engine.by_dates` measured in one scan of the source.

:func:`source_schema` gives the Arrow schema a source starts from: the one a
reader offers (an optional ``arrow_schema(database)`` method, for readers
whose files carry pandas metadata), pyarrow's own for a local parquet file,
or else DuckDB's types for the columns the reader reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flightlab.engine.parquet import ParquetSource
from flightlab.engine.reading import SourceReader, TimeWindow

_NULLABLE_EXTENSION_INTS = {f"{s}Int{b}" for s in ("", "U") for b in (8, 16, 32, 64)}
_EXTENSIONS = {*_NULLABLE_EXTENSION_INTS, "boolean", "string"}
# dask splits a file into several partitions (then its answer has another row
# order and an index column) when its row groups hold over twice its block
# size, 256 MiB; refused from half of that, to stay clear of the edge.
DASK_SPLIT_BYTES = 256 * 1024 * 1024


class CannotReproduce(Exception):
    """The engine cannot give the dask store's exact answer here: the caller
    lets the repo's Feast store answer instead."""


@dataclass(frozen=True)
class ColumnType:
    """An answer column's Arrow type, how the SQL converts the source column
    to it, and whether it is a pandas object column (``null`` when the answer
    holds no value in it)."""

    type: pa.DataType
    conversion: str = "plain"  # plain | double | nan_to_null | list_nan_to_null | list_double
    object_column: bool = False
    extension: str | None = None  # the pandas extension dtype it keeps (Int64 ...)


def source_schema(
    reader: SourceReader, database: duckdb.DuckDBPyConnection, columns: Sequence[str]
) -> pa.Schema:
    """The schema the dask store's pandas frame starts from, for ``columns``."""
    offered = getattr(reader, "arrow_schema", None)
    if callable(offered):
        schema = offered(database)
    elif isinstance(reader, ParquetSource):
        schema = _parquet_schema(reader)
    else:  # a source with no pandas metadata: as pyarrow would read DuckDB's rows
        read = reader.read(database, columns, columns[0], TimeWindow())
        query = f"SELECT * FROM {read.read_sql()} LIMIT 0"
        schema = database.sql(query).to_arrow_table().schema
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise CannotReproduce(f"{reader.description}: no Arrow type for {missing}")
    return schema


def _parquet_schema(source: ParquetSource) -> pa.Schema:
    if source.many_files:
        # dask reads a folder as one partition per file: its answer then has
        # an extra __index_level_0__ column and rows in hash-partition order.
        raise CannotReproduce(f"{source.pattern}: a folder of parquet files")
    metadata = pq.ParquetFile(source.pattern).metadata
    row_groups = [metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)]
    if len(row_groups) > 1 and sum(row_groups) > DASK_SPLIT_BYTES:
        raise CannotReproduce(f"{source.pattern}: large enough for dask to split it")
    return pq.read_schema(source.pattern)


def pandas_dtypes(schema: pa.Schema) -> dict[str, str]:
    """The pandas dtype the schema's pandas metadata names, by column."""
    columns = (schema.pandas_metadata or {}).get("columns") or []
    return {c["name"]: c.get("numpy_type") for c in columns if isinstance(c.get("name"), str)}


def is_list(kind: pa.DataType) -> bool:
    return (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )


def check_timestamp(name: str, kind: pa.DataType) -> None:
    """A timestamp the engine compares as the dask store does, or CannotReproduce."""
    if not pa.types.is_timestamp(kind):
        raise CannotReproduce(f"the timestamp column {name!r} is of type {kind}")


def check_nanoseconds(
    reader: SourceReader,
    database: duckdb.DuckDBPyConnection,
    schema: pa.Schema,
    columns: Sequence[str],
) -> None:
    """DuckDB reads a zone-aware nanosecond timestamp as microseconds: exact
    only when no value has a finer part (pandas writes such columns, mostly of
    whole seconds). Where one has, or the reader cannot say (an optional
    ``whole_microseconds(database, columns)`` method), CannotReproduce."""
    fine = [c for c in columns if _zoned_nanoseconds(schema.field(c).type)]
    if not fine:
        return
    offered = getattr(reader, "whole_microseconds", None)
    if callable(offered):
        whole = offered(database, fine)
    elif isinstance(reader, ParquetSource) and not reader.many_files:
        batches = pq.ParquetFile(reader.pattern).iter_batches(batch_size=1 << 20, columns=fine)
        whole = whole_microseconds(batches)
    else:
        whole = False
    if not whole:
        raise CannotReproduce(f"{fine}: zone-aware nanosecond timestamps finer than DuckDB's")


def _zoned_nanoseconds(kind: pa.DataType) -> bool:
    return pa.types.is_timestamp(kind) and kind.unit == "ns" and kind.tz is not None


def whole_microseconds(batches: Iterable[pa.RecordBatch]) -> bool:
    """Whether every timestamp of ``batches`` is a whole microsecond."""
    for batch in batches:
        for column in batch.columns:
            values = column.cast(pa.int64())
            if pc.any(pc.not_equal(pc.multiply(pc.divide(values, 1000), 1000), values)).as_py():
                return False
    return True


def dask_type(
    source: pa.Field,
    pandas_dtype: str | None,
    column_nulls: bool,
    value_nulls: bool,
    null_row: bool,
) -> ColumnType:
    """The answer's type for a source column, as pandas then pyarrow make it.

    ``column_nulls``: the column holds a null somewhere in the source;
    ``value_nulls``: a list column's values hold a null somewhere; ``null_row``:
    the source is empty and joins as one all-null row.
    """
    kind = source.type
    if pandas_dtype is not None and pandas_dtype not in _EXTENSIONS:
        try:
            np.dtype(pandas_dtype)
        except TypeError:  # another pandas extension (Float64, category ...)
            raise CannotReproduce(f"{source.name!r} of pandas dtype {pandas_dtype}") from None
    if pa.types.is_integer(kind):
        if pandas_dtype in _NULLABLE_EXTENSION_INTS:
            return ColumnType(kind, extension=pandas_dtype)
        if column_nulls or null_row:  # numpy has no integer null: float64
            return ColumnType(pa.float64(), "double")
        return ColumnType(kind)
    if pa.types.is_floating(kind) and not pa.types.is_float16(kind):
        return ColumnType(kind, "nan_to_null")  # NaN and null are one in pandas
    if pa.types.is_boolean(kind):
        if pandas_dtype == "boolean":
            return ColumnType(kind, extension=pandas_dtype)
        return ColumnType(kind, object_column=column_nulls or null_row)
    if pa.types.is_timestamp(kind):
        return ColumnType(kind)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        if pandas_dtype == "string":
            return ColumnType(pa.string(), extension=pandas_dtype)
        return ColumnType(pa.string(), object_column=True)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return ColumnType(pa.binary(), object_column=True)
    if pa.types.is_date(kind):
        return ColumnType(pa.date32(), object_column=True)
    if pa.types.is_null(kind):  # no value anywhere: pandas objects, pyarrow's null
        return ColumnType(pa.null(), object_column=True)
    if is_list(kind):
        return _list_type(source.name, kind.value_type, value_nulls)
    raise CannotReproduce(f"column {source.name!r} of type {kind}")


def _list_type(name: str, value: pa.DataType, value_nulls: bool) -> ColumnType:
    if pa.types.is_integer(value):
        if value_nulls:  # pandas makes every list of the column a float64 array
            return ColumnType(pa.list_(pa.float64()), "list_double", True)
        return ColumnType(pa.list_(value), object_column=True)
    if pa.types.is_floating(value) and not pa.types.is_float16(value):
        return ColumnType(pa.list_(value), "list_nan_to_null", True)
    if pa.types.is_boolean(value):
        return ColumnType(pa.list_(value), object_column=True)
    if pa.types.is_string(value) or pa.types.is_large_string(value):
        return ColumnType(pa.list_(pa.string()), object_column=True)
    raise CannotReproduce(f"list column {name!r} of {value}")


def with_pandas_metadata(schema: pa.Schema, extensions: dict[str, str]) -> pa.Schema:
    """``schema`` with the pandas metadata that makes ``to_pandas`` give the
    columns of ``extensions`` their pandas extension dtype, as the file
    store's frame has it; unchanged without any."""
    if not extensions:
        return schema
    frame = schema.empty_table().to_pandas()
    for name, dtype in extensions.items():
        frame[name] = frame[name].astype(dtype)
    return schema.with_metadata(pa.Schema.from_pandas(frame, preserve_index=False).metadata)


def converted(column: str, conversion: str) -> str:
    """SQL turning the source column ``column`` into the answer's values."""
    if conversion == "double":
        return f"CAST({column} AS DOUBLE)"
    if conversion == "nan_to_null":
        return f"CASE WHEN isnan({column}) THEN NULL ELSE {column} END"
    if conversion == "list_nan_to_null":
        return f"list_transform({column}, x -> CASE WHEN isnan(x) THEN NULL ELSE x END)"
    if conversion == "list_double":
        return f"list_transform({column}, x -> CAST(x AS DOUBLE))"
    return column


def conformed(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` (the query's) in the answer's ``schema``."""
    arrays = []
    for column, field in zip(batch.columns, schema, strict=True):
        if pa.types.is_null(field.type):
            column = pa.nulls(len(column))
        elif column.type != field.type or (
            is_list(field.type) and column.type.value_field.name != field.type.value_field.name
        ):
            column = column.cast(field.type)
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
