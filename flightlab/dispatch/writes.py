"""The writes flightlab makes itself rather than through Feast's store.

For a local parquet ``FileSource`` on Feast's file (dask) or duckdb store,
``offline_write_batch``, ``write_logged_features`` and ``persist`` go through
:mod:`flightlab.storage.parquet_writes`: locked across processes, written to a
temporary file and renamed, so no writer, reader or crash can tear the file.
The content is what the local store would have written (new rows first, in
the file's schema; the duckdb store keeps microsecond timestamps and no
pandas metadata). Any other store or source returns ``False`` from
:func:`handles_source` and keeps Feast's own write path.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
from feast.data_format import ParquetFormat
from feast.data_source import DataSource
from feast.errors import SavedDatasetLocationAlreadyExists
from feast.feature_logging import LoggingConfig
from feast.infra.offline_stores.file_source import (
    FileLoggingDestination,
    FileSource,
    SavedDatasetFileStorage,
)
from feast.infra.offline_stores.offline_store import OfflineStore, RetrievalJob
from feast.saved_dataset import SavedDatasetStorage

from flightlab.storage import parquet_writes


class ParquetWrites:
    """flightlab's own writes for one offline store and repo."""

    def __init__(self, offline_store: OfflineStore, repo_path: str | Path | None):
        # Imported here: the duckdb store pulls in ibis, which only it needs.
        from feast.infra.offline_stores.dask import DaskOfflineStore
        from feast.infra.offline_stores.duckdb import DuckDBOfflineStore

        self.enabled = isinstance(offline_store, (DaskOfflineStore, DuckDBOfflineStore))
        self.repo_path = repo_path
        duckdb = isinstance(offline_store, DuckDBOfflineStore)
        # How the local store's writer leaves a file: duckdb's keeps
        # microseconds and drops the pandas metadata; pyarrow's keeps both.
        self._format: dict[str, Any] = (
            {"timestamp_unit": "us", "keep_metadata": False} if duckdb else {}
        )

    # --- offline_write_batch -----------------------------------------------------

    def handles_source(self, source: DataSource | None) -> bool:
        """Whether rows for ``source`` are appended here (a local parquet file)."""
        if not self.enabled or not isinstance(source, FileSource):
            return False
        if source.file_format is not None and not isinstance(source.file_format, ParquetFormat):
            return False
        path = self._local_path(source.path)
        return path is not None and path.is_file()

    def append(self, source: FileSource, table: pa.Table) -> None:
        path = self._local_path(source.path)
        assert path is not None
        parquet_writes.append_to_parquet_source(path, table, **self._format)

    # --- write_logged_features ---------------------------------------------------

    def handles_logging(self, logging_config: LoggingConfig) -> bool:
        destination = logging_config.destination
        return (
            self.enabled
            and isinstance(destination, FileLoggingDestination)
            and self._local_path(destination.path) is not None
        )

    def write_logs(self, logging_config: LoggingConfig, data: pa.Table) -> None:
        destination = logging_config.destination
        assert isinstance(destination, FileLoggingDestination)
        folder = self._local_path(destination.path)
        assert folder is not None
        parquet_writes.add_files_atomically(
            folder, data, list(destination.partition_by or []), **self._format
        )

    # --- persist -------------------------------------------------------------------

    def handles_storage(self, storage: SavedDatasetStorage) -> bool:
        """Whether a persist to ``storage`` is made here (a local ``.parquet`` file)."""
        if not self.enabled or not isinstance(storage, SavedDatasetFileStorage):
            return False
        options = storage.file_options
        if options.file_format is not None and not isinstance(options.file_format, ParquetFormat):
            return False
        path = self._local_path(options.uri)
        return path is not None and path.suffix == ".parquet" and not path.is_dir()

    def persist(self, job: RetrievalJob, storage: SavedDatasetFileStorage, overwrite: bool) -> None:
        """Let Feast's job write its file (so its content is Feast's), to a
        temporary path, and rename that into place under the lock."""
        path = self._local_path(storage.file_options.uri)
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        with parquet_writes.destination_lock(path):
            if path.exists() and not overwrite:
                raise SavedDatasetLocationAlreadyExists(location=storage.file_options.uri)

            def write(temp: Path) -> None:
                temp_storage = SavedDatasetFileStorage(
                    path=str(temp),
                    file_format=storage.file_options.file_format,
                    s3_endpoint_override=storage.file_options.s3_endpoint_override,
                )
                job.persist(temp_storage, allow_overwrite=True)

            parquet_writes.replace_atomically(path, write)

    # --- reads ---------------------------------------------------------------------

    def reading(self, sources: Iterable[DataSource]) -> AbstractContextManager[None]:
        """Hold off renames of the parquet files among ``sources`` while a
        request reads them (see parquet_writes.reading)."""
        if not self.enabled:
            return nullcontext()
        paths = [self._local_path(s.path) for s in sources if self.handles_source(s)]
        return parquet_writes.reading(p for p in paths if p is not None)

    def _local_path(self, uri: str) -> Path | None:
        """The absolute local path of ``uri``; None for a remote one (s3://...)."""
        if urlparse(uri).scheme:
            return None
        path = Path(uri)
        if not path.is_absolute() and self.repo_path is not None:
            path = Path(self.repo_path) / path
        return path
