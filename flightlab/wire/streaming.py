"""Cutting results into bounded record batches, and streaming them out.

No batch is larger than a row and a byte bound: gRPC refuses messages over
2 GiB, and small batches let both ends stream in flat memory. The first batch
of a result carries ``{"total_rows", "total_bytes"}`` as application metadata
so a client can show progress against the total.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

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


def _split_oversized(batch: pa.RecordBatch, max_bytes: int) -> Iterator[pa.RecordBatch]:
    # Rows can differ in size (variable-length lists, strings): halve a batch
    # that the average-based estimate let grow over the bound.
    if batch.num_rows <= 1 or batch.nbytes <= max_bytes:
        yield batch
        return
    half = batch.num_rows // 2
    yield from _split_oversized(batch.slice(0, half), max_bytes)
    yield from _split_oversized(batch.slice(half), max_bytes)


def totals_metadata(table: pa.Table) -> bytes:
    return json.dumps({TOTALS_ROWS_KEY: table.num_rows, TOTALS_BYTES_KEY: table.nbytes}).encode()


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
    first = True
    for batch in bounded_batches(table, max_rows, max_bytes):
        if is_cancelled():
            raise flight.FlightCancelledError("the client went away; streaming stopped")
        yield batch, (totals_metadata(table) if first else None)
        first = False
    if first:  # an empty result still tells its totals
        yield pa.RecordBatch.from_pylist([], schema=table.schema), totals_metadata(table)


def write_options(compression: str | None) -> pa.ipc.IpcWriteOptions:
    return pa.ipc.IpcWriteOptions(compression=compression)
