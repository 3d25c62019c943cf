"""Results written as parquet files under the server's export location.

``RetrievalJob.to_remote_storage()`` through flightlab's client runs the
retrieval on the server, which writes the result where it was told to
(``--export-location``: a local folder or an ``s3://bucket/prefix`` URI,
read with pyarrow's filesystems) as it streams from the engine, one batch at
a time, and answers the files' URIs. Each export gets a folder of its own,
named by its command id, of files ``part-00000.parquet``, ... of about
``max_file_bytes`` of Arrow data each. An export that fails midway removes
what it wrote: a folder that exists is complete.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from flightlab.engine.results import ResultStream
from flightlab.errors import ExportNotConfiguredError

DEFAULT_EXPORT_FILE_BYTES = 256 * 1024**2


def export_retrieval(
    location: ExportLocation | None, retrieve: Callable[[], ResultStream]
) -> dict[str, Any]:
    """``retrieve()``'s result written under ``location`` as it streams: the
    summary ``{"files": [...], "rows": n}``."""
    if location is None:
        raise ExportNotConfiguredError(
            "this server has no export location: start it with "
            "--export-location FOLDER (or s3://BUCKET/PREFIX)"
        )
    stream = retrieve()
    try:
        files, rows = location.write(stream, uuid.uuid4().hex)
    finally:
        stream.close()
    return {"files": files, "rows": rows}


class ExportLocation:
    """Where a server writes exported results (see the module's text)."""

    def __init__(self, uri: str, max_file_bytes: int = DEFAULT_EXPORT_FILE_BYTES):
        if "://" not in uri:
            uri = Path(uri).resolve().as_uri()
        self.uri = uri.rstrip("/")
        self.max_file_bytes = max_file_bytes
        self._filesystem, self._root = pafs.FileSystem.from_uri(self.uri)
        self._scheme = self.uri.split("://", 1)[0]

    def write(self, result: ResultStream, name: str) -> tuple[list[str], int]:
        """Write ``result`` to a new folder ``name``: the files' URIs, in row
        order, and the rows written."""
        folder = f"{self._root}/{name}"
        self._filesystem.create_dir(folder)
        try:
            paths, rows = _write_parts(self._filesystem, folder, result, self.max_file_bytes)
        except BaseException:
            self._filesystem.delete_dir(folder)
            raise
        return [self._uri_of(path) for path in paths], rows

    def _uri_of(self, path: str) -> str:
        if self._scheme == "file":
            return path  # a local path, as Feast's file-based stores return them
        return f"{self._scheme}://{path}"


def _write_parts(
    filesystem: pafs.FileSystem, folder: str, result: ResultStream, max_file_bytes: int
) -> tuple[list[str], int]:
    paths: list[str] = []
    writer: pq.ParquetWriter | None = None
    written = rows = 0
    try:
        for batch in _nonempty(result.batches):
            if writer is None or written >= max_file_bytes:
                if writer is not None:
                    writer.close()
                paths.append(f"{folder}/part-{len(paths):05d}.parquet")
                writer = pq.ParquetWriter(paths[-1], result.schema, filesystem=filesystem)
                written = 0
            writer.write_batch(batch)
            written += batch.nbytes
            rows += batch.num_rows
        if writer is None:  # no rows: one file still says what the columns are
            paths.append(f"{folder}/part-00000.parquet")
            pq.write_table(result.schema.empty_table(), paths[-1], filesystem=filesystem)
    finally:
        if writer is not None:
            writer.close()
    return paths, rows


def _nonempty(batches: Iterable[pa.RecordBatch]) -> Iterable[pa.RecordBatch]:
    return (batch for batch in batches if batch.num_rows)
