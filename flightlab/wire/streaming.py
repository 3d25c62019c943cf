"""Cutting results into bounded record batches, and streaming them out.

No batch is larger than a row and a byte bound: gRPC refuses messages over
2 GiB, and small batches let both ends stream in flat memory. The first batch
of a result carries ``{"total_rows", "total_bytes"}`` as application metadata
so a client can show progress against the total.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.flight as flight

TOTALS_ROWS_KEY = "total_rows"
TOTALS_BYTES_KEY = "total_bytes"


def bounded_batches(table: pa.Table, max_rows: int, max_bytes: int) -> Iterator[pa.RecordBatch]:
    """The table's rows, in order, as batches within both bounds; never an
    empty batch (a table's empty chunks are skipped).

    A single row larger than ``max_bytes`` still goes alone in its batch.
    """
    if table.num_rows == 0:
        return
    row_bytes = max(1, table.nbytes // table.num_rows)
    rows_per_batch = max(1, min(max_rows, max_bytes // row_bytes))
    for batch in table.to_batches(max_chunksize=rows_per_batch):
        if batch.num_rows:
            yield from _split_oversized(batch, max_bytes)


def bounded_stream(
    batches: Iterable[pa.RecordBatch], max_rows: int, max_bytes: int
) -> Iterator[pa.RecordBatch]:
    """:func:`bounded_batches` for batches that arrive one at a time."""
    for batch in batches:
        yield from bounded_batches(pa.Table.from_batches([batch]), max_rows, max_bytes)


def _split_oversized(batch: pa.RecordBatch, max_bytes: int) -> Iterator[pa.RecordBatch]:
    # Rows can differ in size (variable-length lists, strings): halve a batch
    # that the average-based estimate let grow over the bound.
    if batch.num_rows <= 1 or batch.nbytes <= max_bytes:
        yield batch
        return
    half = batch.num_rows // 2
    yield from _split_oversized(batch.slice(0, half), max_bytes)
    yield from _split_oversized(batch.slice(half), max_bytes)


def totals_metadata(total_rows: int | None, total_bytes: int | None) -> bytes:
    return json.dumps({TOTALS_ROWS_KEY: total_rows, TOTALS_BYTES_KEY: total_bytes}).encode()


def parse_totals(metadata: pa.Buffer | bytes | None) -> tuple[int | None, int | None]:
    if not metadata:
        return None, None
    raw = metadata.to_pybytes() if isinstance(metadata, pa.Buffer) else metadata
    try:
        totals = json.loads(raw)
        return totals.get(TOTALS_ROWS_KEY), totals.get(TOTALS_BYTES_KEY)
    except (ValueError, AttributeError):
        return None, None


def result_batches(
    table: pa.Table,
    max_rows: int,
    max_bytes: int,
    is_cancelled: Callable[[], bool],
) -> Iterator[tuple[pa.RecordBatch, bytes | None]]:
    """(batch, app_metadata) pairs for a result; stops if the client goes away."""
    return stream_batches(
        table.schema,
        bounded_batches(table, max_rows, max_bytes),
        (table.num_rows, table.nbytes),
        is_cancelled,
    )


def stream_batches(
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    totals: tuple[int | None, int | None],
    is_cancelled: Callable[[], bool],
) -> Iterator[tuple[pa.RecordBatch, bytes | None]]:
    """(batch, app_metadata) pairs: the first carries the totals (what is known
    of them: a result streamed as it is made has no byte total); stops if the
    client goes away."""
    metadata: bytes | None = totals_metadata(*totals)
    for batch in batches:
        if is_cancelled():
            raise flight.FlightCancelledError("the client went away; streaming stopped")
        yield batch, metadata
        metadata = None
    if metadata is not None:  # an empty result still tells its totals
        yield pa.RecordBatch.from_pylist([], schema=schema), metadata


def write_options(compression: str | None) -> pa.ipc.IpcWriteOptions:
    return pa.ipc.IpcWriteOptions(compression=compression)
