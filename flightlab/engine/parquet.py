"""Parquet ``FileSource``s on local disk: a file, or every parquet file below a folder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
from feast.data_source import DataSource
from feast.infra.offline_stores.file_source import FileSource, ParquetFormat

from flightlab.engine.reading import TimeWindow, sql_string


@dataclass(frozen=True)
class ParquetSource:
    """Where a source's rows are, as DuckDB's ``read_parquet`` argument. Its
    own reader and read: DuckDB reads only the columns a query names."""

    pattern: str  # a file, or every parquet file below a folder

    @property
    def description(self) -> str:
        return self.pattern

    @property
    def many_files(self) -> bool:
        return "*" in self.pattern

    def column_names(self, database: duckdb.DuckDBPyConnection) -> tuple[str, ...]:
        return tuple(database.sql(f"SELECT * FROM {self.read_sql()} LIMIT 0").columns)

    def read(
        self,
        database: duckdb.DuckDBPyConnection,
        columns: Sequence[str],
        timestamp_column: str,
        window: TimeWindow,
    ) -> ParquetSource:
        return self

    def read_sql(self, with_row_ids: bool = False) -> str:
        """``read_parquet(...)``; ``with_row_ids`` adds the columns that name a
        row: ``file_row_number`` and, for a folder, ``filename``."""
        options = ""
        if with_row_ids:
            options = ", file_row_number = true" + (", filename = true" if self.many_files else "")
        return f"read_parquet({sql_string(self.pattern)}{options})"

    def row_id_columns(self) -> list[str]:
        return ["filename", "file_row_number"] if self.many_files else ["file_row_number"]


def local_parquet(source: DataSource | None, repo_path: str | Path | None) -> ParquetSource | None:
    """The parquet files behind ``source``, or None when they are not local
    parquet files (another source type or format, a remote URI, a file that
    is not there)."""
    if type(source) is not FileSource:  # subclasses (lance, iceberg ...) read otherwise
        return None
    path = source.path
    if "://" in path:
        return None
    if not (isinstance(source.file_format, ParquetFormat) or source.file_format is None):
        return None
    resolved = Path(FileSource.get_uri_for_file_path(repo_path, path))
    if not resolved.exists() and Path(path).exists():
        resolved = Path(path)  # relative to the working directory, as duckdb reads it
    if resolved.is_dir():
        return ParquetSource(str(resolved / "**" / "*.parquet"))
    if resolved.is_file() and (source.file_format is not None or path.endswith(".parquet")):
        return ParquetSource(str(resolved))
    return None
