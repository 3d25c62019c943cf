"""Storage that flightlab writes itself: crash-safe, cross-process parquet writes."""

from flightlab.storage.parquet_writes import (
    ParquetWriteError,
    add_files_atomically,
    append_to_parquet_source,
    destination_lock,
    reading,
    replace_atomically,
    write_parquet_atomically,
)

__all__ = [
    "ParquetWriteError",
    "add_files_atomically",
    "append_to_parquet_source",
    "destination_lock",
    "reading",
    "replace_atomically",
    "write_parquet_atomically",
]
