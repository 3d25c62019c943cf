"""The entity DataFrame as the client uploads it: Arrow, converted one slice
at a time as the upload reads it, so no second full copy is held."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pyarrow as pa

from flightlab.wire.flight_errors import MalformedEntityDataError

ENTITY_SLICE_ROWS = 65_536


def entity_schema_of(entity_df: pd.DataFrame) -> pa.Schema:
    """The Arrow schema the entity rows travel in (no pandas index), inferred
    from the first slice, as the upload converts them: from the whole frame,
    every object column would be converted in full just to learn its type. A
    column all missing there takes the type of its first present values. A
    later slice that does not fit fails the upload, naming its rows."""
    head = entity_df.iloc[:ENTITY_SLICE_ROWS]
    try:
        schema = pa.Schema.from_pandas(head, preserve_index=False)
        untyped = [i for i, f in enumerate(schema) if pa.types.is_null(f.type)]
        if not untyped or len(entity_df) <= ENTITY_SLICE_ROWS:
            return schema
        for i in untyped:
            column = entity_df.iloc[:, i]
            present = column[column.notna()].iloc[:ENTITY_SLICE_ROWS]
            if len(present):
                found = pa.Schema.from_pandas(present.to_frame(), preserve_index=False)
                schema = schema.set(i, schema.field(i).with_type(found.field(0).type))
        # Re-derived from the head with the final types, so that the pandas
        # metadata the schema carries describes them.
        return pa.Table.from_pandas(head, schema=schema, preserve_index=False).schema
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise MalformedEntityDataError(f"the entity DataFrame cannot be sent: {exc}") from None


def entity_rows_reader(entity_df: pd.DataFrame, schema: pa.Schema) -> pa.RecordBatchReader:
    """The frame's rows as Arrow, converted one slice at a time as they are
    read (``schema``: :func:`entity_schema_of`'s), timestamps in microseconds."""
    wire = wire_schema(schema)

    def slices() -> Iterator[pa.RecordBatch]:
        for start in range(0, len(entity_df), ENTITY_SLICE_ROWS):
            rows = entity_df.iloc[start : start + ENTITY_SLICE_ROWS]
            try:
                batch = pa.RecordBatch.from_pandas(rows, schema=schema, preserve_index=False)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise MalformedEntityDataError(
                    f"the entity DataFrame cannot be sent: rows from {start}: {exc}"
                ) from None
            yield batch if wire is schema else batch.cast(wire, safe=False)

    return pa.RecordBatchReader.from_batches(wire, slices())


def wire_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with nanosecond timestamps as microseconds (the zone kept).
    The server floors every entity timestamp to microseconds, as Feast's stores
    keep them, with the same cast: sent as nanoseconds, it would hold a second,
    cast copy of each such column next to the upload while the request runs."""
    fine = [
        i for i, f in enumerate(schema) if pa.types.is_timestamp(f.type) and f.type.unit == "ns"
    ]
    for i in fine:
        field = schema.field(i)
        schema = schema.set(i, field.with_type(pa.timestamp("us", tz=field.type.tz)))
    return schema
