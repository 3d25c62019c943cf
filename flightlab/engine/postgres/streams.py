"""One query's result, read as Arrow record batches as PostgreSQL sends them.

ADBC runs a query as ``COPY (...) TO STDOUT (FORMAT binary)`` and builds
batches as the rows arrive; PostgreSQL waits while nobody reads (memory stays
bounded). A stream left half-read would keep the query running, and the next
query on its connection would wait for the rest: so closing a stream before
its end cancels the query first, then the session goes back to its pool
(closed instead if it saw an error).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from flightlab.engine.postgres.connections import Session

# ADBC's batch size hint for results streamed to a client: the first batch
# comes early (the default, 16 MB, holds 100k narrow rows back to the end).
STREAM_BATCH_BYTES = 1 << 20


class QueryStream(Iterator[pa.RecordBatch]):
    """The batches of one query on ``session``, which the stream owns from
    now on: it gives the session back once read to the end, failed or closed
    (unless ``release`` is False: then it only marks a session that failed)."""

    def __init__(
        self,
        session: Session,
        sql: str,
        batch_bytes: int | None = STREAM_BATCH_BYTES,
        on_batch: Callable[[pa.RecordBatch], None] | None = None,
        release: bool = True,
    ):
        self._session = session
        self._release = release  # False: the caller gives the session back
        self._on_batch = on_batch
        self._once = threading.Lock()
        self._cursor: Any = None
        self._reader: pa.RecordBatchReader | None = None
        try:
            self._cursor = session.cursor(batch_bytes)
            self._cursor.execute(sql)
            self._reader = self._cursor.fetch_record_batch()
        except BaseException:
            self._end(broken=True)
            raise

    @property
    def schema(self) -> pa.Schema:
        assert self._reader is not None
        return self._reader.schema

    def __next__(self) -> pa.RecordBatch:
        if self._once.locked() or self._reader is None:
            raise StopIteration
        try:
            batch = self._reader.read_next_batch()
        except StopIteration:
            self._end(broken=False)
            raise
        except BaseException:
            self._end(broken=True)
            raise
        if self._on_batch is not None:
            self._on_batch(batch)
        return batch

    def close(self) -> None:
        """Stop reading: the query is cancelled if it still runs."""
        if not self._once.locked():
            self._session.cancel()
            self._end(broken=False)

    def _end(self, broken: bool) -> None:
        if not self._once.acquire(blocking=False):
            return
        for part in (self._reader, self._cursor):
            try:
                if part is not None:
                    part.close()
            except Exception:
                broken = True
        if broken:
            self._session.broken()
        if self._release:
            self._session.release()
