"""Feast objects decoded from what a request carries: entity rows as the
DataFrame Feast's stores take, serialized ``DataSource`` and
``SavedDatasetStorage`` protos, and where a source stores its rows."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
from feast.data_source import DataSource
from feast.protos.feast.core.DataSource_pb2 import DataSource as DataSourceProto
from feast.protos.feast.core.SavedDataset_pb2 import (
    SavedDatasetStorage as SavedDatasetStorageProto,
)
from feast.saved_dataset import SavedDatasetStorage
from google.protobuf.message import DecodeError

from flightlab.dispatch.backends import saved_dataset_storage
from flightlab.errors import MalformedEntityDataError, MalformedParameterError


def entity_frame(table: pa.Table) -> pd.DataFrame:
    """Entity rows as the DataFrame Feast expects.

    Timestamps are floored to microseconds: SQL-backed stores (duckdb) refuse
    finer ones, and no offline store keeps nanoseconds.
    """
    if table.num_columns == 0:
        raise MalformedEntityDataError("the entity data has no columns")
    columns = []
    for column in table.columns:
        if pa.types.is_timestamp(column.type) and column.type.unit == "ns":
            column = column.cast(pa.timestamp("us", tz=column.type.tz), safe=False)
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names).to_pandas()


def data_source_from_bytes(raw: bytes) -> DataSource:
    proto = DataSourceProto()
    try:
        proto.ParseFromString(raw)
        return DataSource.from_proto(proto)
    except (DecodeError, ValueError, KeyError) as exc:
        raise MalformedParameterError(
            f"'data_source' is not a serialized Feast DataSource: {exc}"
        ) from None


def storage_proto(source: DataSource) -> SavedDatasetStorageProto | None:
    """Where a data source stores its rows, comparable across sources."""
    try:
        return saved_dataset_storage(source).to_proto()
    except (ValueError, AttributeError):
        return None  # a source kind that cannot be a saved-dataset storage


def storage_from_bytes(raw: bytes) -> SavedDatasetStorage:
    proto = SavedDatasetStorageProto()
    try:
        proto.ParseFromString(raw)
        return SavedDatasetStorage.from_proto(proto)
    except (DecodeError, ValueError, KeyError, AttributeError) as exc:
        raise MalformedParameterError(
            f"'storage' is not a serialized Feast SavedDatasetStorage: {exc}"
        ) from None
