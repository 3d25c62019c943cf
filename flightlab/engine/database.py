"""The DuckDB database each engine request runs on, and how its results are read.

Each request gets a database of its own (its threads, memory limit and spill
folder), so requests run side by side with no lock between them, and a
request's database is closed exactly once however the request ends.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa

from flightlab.engine.settings import EngineSettings
from flightlab.engine.spill import default_spill_root, owned_folder
from flightlab.engine.usage import UsageCounters
from flightlab.errors import ResourceExhaustedError, shortened

# Rows DuckDB hands over per batch; the server cuts them to its own bounds.
READ_BATCH_ROWS = 65_536


class RequestDatabases:
    """Opens the request databases of one engine, and counts what they do."""

    def __init__(self, settings: EngineSettings, usage: UsageCounters):
        self.settings = settings
        self._usage = usage
        check_resources(settings)

    def open(self) -> tuple[duckdb.DuckDBPyConnection, Callable[[], None]]:
        """A new in-memory database, and the function that closes it (once,
        however often it is called)."""
        spill_root = self.spill_root
        spill_root.mkdir(parents=True, exist_ok=True)
        # DuckDB names its spill files the same in every database and deletes its
        # temp directory when the database closes: requests (and replicas) sharing
        # one folder would overwrite each other's spill files. Each gets its own
        # subfolder of the root, which DuckDB creates on the first spill and removes
        # on close (it makes no parent folders).
        config = {
            "temp_directory": str(owned_folder(spill_root, "request")),
            **_resource_config(self.settings),
        }
        database = duckdb.connect(":memory:", config=config)
        self._usage.opened()
        close = self._closer(database)
        try:
            # TIMESTAMPTZ values come back as Arrow timestamps in UTC.
            database.execute("SET TimeZone = 'UTC'")
            # DuckDB 1.5 may plan an ASOF join against a registered Arrow table as
            # a nested loop (minutes for 100k x 1M rows); this keeps the sort-merge plan.
            database.execute("SET asof_loop_join_threshold = 0")
            # A server inside a notebook kernel would otherwise draw DuckDB's progress
            # bar under whichever cell ran last, for every query slower than 2 s.
            database.execute("SET enable_progress_bar = false")
            if self.settings.spill_max_size is not None:
                _cap_spill(database, self.settings.spill_max_size)
        except BaseException:
            close()
            raise
        return database, close

    @property
    def spill_root(self) -> Path:
        """The folder the requests' spill folders are made in."""
        return default_spill_root(self.settings.spill_dir)

    def _closer(self, database: duckdb.DuckDBPyConnection) -> Callable[[], None]:
        once = threading.Lock()

        def close() -> None:
            if not once.acquire(blocking=False):
                return
            try:
                database.close()
            finally:
                self._usage.closed()

        return close

    def read(
        self, database: duckdb.DuckDBPyConnection, query: str
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Run ``query``: its schema, and its batches as DuckDB produces them."""
        with self.memory_errors_named():
            reader = database.sql(query).to_arrow_reader(READ_BATCH_ROWS)
        return reader.schema, self.counted(reader)

    def counted(self, batches: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
        """``batches``, counted as read, DuckDB's memory errors named."""
        items = iter(batches)
        while True:
            with self.memory_errors_named():
                batch = next(items, None)
            if batch is None:
                return
            self._usage.read(batch.num_rows)
            yield batch

    @contextmanager
    def memory_errors_named(self) -> Iterator[None]:
        """DuckDB's errors of running out of memory or of spill space (a join
        that could not spill enough) as the server's resource error, naming
        the folder and the settings to change."""
        try:
            yield
        # Mid-stream, DuckDB's errors reach us through Arrow's stream reader as
        # OSErrors with DuckDB's text: the text, not the class, tells them apart.
        except (duckdb.OutOfMemoryException, duckdb.IOException, OSError) as exc:
            error = self._resource_error(exc)
            if error is None:
                raise
            raise error from exc

    def _resource_error(self, exc: Exception) -> ResourceExhaustedError | None:
        text = str(exc)
        said = shortened(text.strip().splitlines()[0] if text.strip() else text, 300)
        remedies = (
            f"free space there, point --spill-dir at a larger disk, or raise "
            f"--engine-memory-limit (now {self._memory_limit()}) so less spills"
        )
        if _SPILL_CAP in text:
            # DuckDB's cap on a database's spill files: --spill-max-size, or by
            # default 90% of its disk's free space when the request began.
            cap = self.settings.spill_max_size or "90% of the disk's free space"
            return ResourceExhaustedError(
                f"the engine's spill folder {self.spill_root} is full: this request's "
                f"spill files reached their cap ({cap}; --spill-max-size); {remedies} "
                f"({said})"
            )
        if _NO_SPACE in text:
            return ResourceExhaustedError(
                f"the disk of the engine's spill folder {self.spill_root} is full "
                f"(no space left on device); {remedies} ({said})"
            )
        if isinstance(exc, duckdb.OutOfMemoryException) or text.startswith(_OUT_OF_MEMORY):
            return ResourceExhaustedError(
                f"the engine ran out of memory for this request (memory limit per "
                f"request: {self._memory_limit()}); raise --engine-memory-limit, or make "
                f"room in the spill folder {self.spill_root}: {said}"
            )
        return None  # another I/O error (a source file unreadable): not a resource's

    def _memory_limit(self) -> str:
        return self.settings.memory_limit or "DuckDB's default, 80% of RAM"


# How DuckDB says a request ran out: of memory (its "Out of Memory Error"), of
# spill space under its cap on spill files (an out-of-memory error naming the
# setting), or of disk (an I/O error with the system's ENOSPC text).
_SPILL_CAP = "max_temp_directory_size"
_OUT_OF_MEMORY = "Out of Memory Error"
_NO_SPACE = os.strerror(errno.ENOSPC)


def _cap_spill(database: duckdb.DuckDBPyConnection, size: str) -> None:
    # Set after connecting: given at connect, the cap is replaced by the disk's
    # free space when DuckDB takes the temp_directory setting (DuckDB 1.5).
    database.execute(f"SET max_temp_directory_size = '{size.replace(chr(39), chr(39) * 2)}'")


def _resource_config(settings: EngineSettings) -> dict[str, str | int]:
    config: dict[str, str | int] = {}
    if settings.threads is not None:
        config["threads"] = settings.threads
    if settings.memory_limit is not None:
        config["memory_limit"] = settings.memory_limit
    return config


def check_resources(settings: EngineSettings) -> None:
    """A memory limit or spill cap DuckDB cannot read fails when the server
    is set up, not on every request."""
    config = _resource_config(settings)
    if not config and settings.spill_max_size is None:
        return
    try:
        database = duckdb.connect(":memory:", config=config)
        try:
            if settings.spill_max_size is not None:
                _cap_spill(database, settings.spill_max_size)
        finally:
            database.close()
    except duckdb.Error as exc:
        shown = {**config, "spill_max_size": settings.spill_max_size}
        raise ValueError(
            f"the engine's resources are not valid for DuckDB ({shown}): {exc}"
        ) from None
