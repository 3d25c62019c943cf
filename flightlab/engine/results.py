"""A retrieval's answer as it is produced: a schema, then record batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa

FEAST = "feast"
FLIGHTLAB = "flightlab"


@dataclass
class ResultStream:
    """Batches of one result, read once, in order.

    ``total_rows`` is known up front for a historical retrieval (one row per
    entity row) and None otherwise; ``engine`` names who answered (``feast``
    or ``flightlab``); ``close`` frees what produced the batches (a DuckDB
    database) and runs however the stream ends.
    """

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    engine: str
    total_rows: int | None = None
    total_bytes: int | None = None
    close: Callable[[], None] = field(default=lambda: None)

    @classmethod
    def of_table(cls, table: pa.Table, engine: str = FEAST) -> ResultStream:
        """A result already held whole (what Feast's stores return)."""
        return cls(
            table.schema,
            iter(table.to_batches()),
            engine,
            total_rows=table.num_rows,
            total_bytes=table.nbytes,
        )

    def read_all(self) -> pa.Table:
        try:
            return pa.Table.from_batches(list(self.batches), schema=self.schema)
        finally:
            self.close()


def closing_both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    """A closer that runs ``first``, then ``second`` even if ``first`` failed."""

    def both() -> None:
        try:
            first()
        finally:
            second()

    return both
