"""A result written to a folder of parquet files as it streams in.

The client never holds more than the batch in hand and the open file's
current row group: a result larger than the client's memory can be written.
Each file is ``part-NNNNN.parquet``, closed once the Arrow data written to it
reaches ``max_file_bytes`` (so a file holds at most that plus one batch), and
renamed into place only when complete: a reader of the folder never sees a
half-written file. A retrieval that fails midway leaves no part behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024
PART_NAME = "part-{:05d}.parquet"


def write_parquet_parts(
    batches: Iterable[pa.RecordBatch],
    folder: str | os.PathLike[str],
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    compression: str = "zstd",
) -> list[Path]:
    """Write ``batches`` to parquet files in ``folder`` (made if missing; it
    must hold no parquet file yet); return the files, in the order of the rows."""
    if max_file_bytes <= 0:
        raise ValueError(f"max_file_bytes must be positive, not {max_file_bytes}")
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for p in target.glob("*.parquet"))
    if existing:
        raise FileExistsError(
            f"{target} already holds parquet files ({', '.join(existing[:3])}"
            f"{', ...' if len(existing) > 3 else ''}): write a result to an empty folder"
        )
    parts = _Parts(target, max_file_bytes, compression)
    try:
        for batch in batches:
            parts.write(batch)
        return parts.finish()
    except BaseException:
        parts.discard()
        raise


class _Parts:
    """The files written so far and the one open."""

    def __init__(self, folder: Path, max_file_bytes: int, compression: str):
        self._folder = folder
        self._max_file_bytes = max_file_bytes
        self._compression = compression
        self._done: list[Path] = []
        self._writer: pq.ParquetWriter | None = None
        self._open_path: Path | None = None
        self._open_bytes = 0
        self._schema: pa.Schema | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        if self._schema is None:
            self._schema = batch.schema
        if batch.num_rows == 0:
            return
        if self._writer is None:
            self._open()
        assert self._writer is not None
        self._writer.write_batch(batch)
        self._open_bytes += batch.nbytes
        if self._open_bytes >= self._max_file_bytes:
            self._close()

    def finish(self) -> list[Path]:
        if self._writer is None and not self._done and self._schema is not None:
            self._open()  # an empty result: one file, with the result's columns
        self._close()
        return list(self._done)

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        for path in [*self._done, self._open_path]:
            if path is not None:
                path.unlink(missing_ok=True)
        self._writer, self._open_path, self._done = None, None, []

    def _open(self) -> None:
        assert self._schema is not None
        final = self._folder / PART_NAME.format(len(self._done))
        self._open_path = final.with_name(f".{final.name}.tmp")
        self._writer = pq.ParquetWriter(
            self._open_path, self._schema, compression=self._compression
        )
        self._open_bytes = 0

    def _close(self) -> None:
        if self._writer is None or self._open_path is None:
            return
        self._writer.close()
        final = self._folder / self._open_path.name[1 : -len(".tmp")]
        self._open_path.rename(final)
        self._done.append(final)
        self._writer, self._open_path = None, None
