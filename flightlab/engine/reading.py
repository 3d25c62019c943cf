"""How the engine reads a source in one request: the protocols each kind of source meets.

A :class:`SourceReader` (one per data source) gives the source's column
names and, for one request, a :class:`SourceRead`: the SQL the request's
DuckDB query reads the source with, given the columns and the event-time
window the request can use. A reader may fetch rows into the request's
database (a remote source) or name files DuckDB reads itself (local parquet).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import duckdb


@dataclass(frozen=True)
class TimeWindow:
    """The event times a request can use: ``[start, end]``, an end None when open."""

    start: datetime | None = None
    end: datetime | None = None


class SourceRead(Protocol):
    """A source as one request's SQL reads it.

    A read may also have a ``row_filter`` attribute: SQL on the source's own
    columns that keeps (at least) the rows the request can use, which the
    query adds to its WHERE so that DuckDB can skip what it excludes.
    """

    description: str  # where its rows are, for messages

    def read_sql(self, with_row_ids: bool = False) -> str:
        """A DuckDB table expression; ``with_row_ids`` adds the columns that
        name a row (see :meth:`row_id_columns`)."""
        ...

    def row_id_columns(self) -> list[str]: ...


class SourceReader(Protocol):
    """A data source the engine can read."""

    description: str

    def column_names(self, database: duckdb.DuckDBPyConnection) -> tuple[str, ...]:
        """The source's columns, as the source names them."""
        ...

    def read(
        self,
        database: duckdb.DuckDBPyConnection,
        columns: Sequence[str],
        timestamp_column: str,
        window: TimeWindow,
    ) -> SourceRead:
        """How ``database`` reads the rows of ``columns`` whose
        ``timestamp_column`` is in ``window`` (at least those: the query
        applies the exact bounds again)."""
        ...


def sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def sql_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
