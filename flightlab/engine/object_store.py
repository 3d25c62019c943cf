"""Parquet ``FileSource``s in S3 or an S3-compatible store (``s3://bucket/key``), read by pyarrow.

DuckDB's own S3 reader (the httpfs extension) is not used: DuckDB downloads it
for its exact version on first use, which an offline server cannot do, and no
package of it matches every DuckDB release. pyarrow's ``S3FileSystem`` and
``pyarrow.dataset`` read the objects instead, asked for the request's columns
only (projection) and with a filter on the event timestamp (row groups whose
statistics fall outside the request's window are never fetched).

A request reads the rows once, with a column numbering them, into its own
DuckDB database, so :mod:`~flightlab.engine.sql` runs on them unchanged (a
retrieval reads its source twice: candidates, then features by row id). How
they are held depends on their size, estimated before any row is fetched
from the footers of the row groups the window keeps:

- up to a quarter of the request's memory limit (``--engine-memory-limit``,
  DuckDB's 80% of RAM by default): the Arrow table pyarrow reads, registered
  in the database. The fastest: pyarrow decodes in parallel, and DuckDB
  joins on it about as fast as on the local file (benchmarks/object_storage.py
  measured 0.66 to 1.0 times the local speed, against 0.3 to 0.7 with a
  DuckDB table, whose copy costs and whose insert runs on one thread).
  But it sits outside DuckDB's limit and cannot spill: hence the bound,
  which keeps the request within about 1.25 times its limit (the estimate
  is each column chunk's uncompressed size or its values at their Arrow
  width, whichever is larger; a dictionary of long strings can still exceed it);
- larger: a DuckDB table, the rows streamed into it batch by batch. It is
  held within the limit and spills to the request's spill folder, as the
  join does.

Where the objects are: Feast's ``s3_endpoint_override`` (``http://host:port``,
split into pyarrow's endpoint and scheme), otherwise AWS itself. Credentials:
those of the source's ``connection_ref`` where Feast resolves one, otherwise
the AWS SDK's default chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``~/.aws``, a web identity or the instance's role). The failures a request
can meet name the URI and the endpoint, never a credential.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from feast.data_source import DataSource
from feast.infra.offline_stores.file_source import FileSource, ParquetFormat

from flightlab.engine.by_dates_types import DASK_SPLIT_BYTES, CannotReproduce, whole_microseconds
from flightlab.engine.reading import TimeWindow, sql_name
from flightlab.engine.s3 import S3Endpoint, named_error, s3_filesystem
from flightlab.errors import (
    MissingSourceColumnError,
    OfflineStoreCredentialsError,
    ResourceExhaustedError,
    SourceObjectNotFoundError,
    shortened,
)

SCHEME = "s3://"
ROW_ID = "__flightlab_row"  # the fetched rows' number
SCAN_BATCH_ROWS = 65_536
# The share of the request's memory limit fetched rows may take as an Arrow
# table, outside DuckDB's accounting (see the module's docstring).
ARROW_SHARE = 0.25
# HEAD requests made at once to learn a prefix's objects' ETags.
VERSION_HEADS = 8
_tables = itertools.count()


def object_store_parquet(source: DataSource | None) -> ObjectStoreParquet | None:
    """The reader of a parquet ``FileSource`` at an ``s3://`` URI (an object,
    or a prefix holding parquet objects); None for any other source."""
    if type(source) is not FileSource or not source.path.startswith(SCHEME):
        return None
    if not (isinstance(source.file_format, ParquetFormat) or source.file_format is None):
        return None
    return ObjectStoreParquet(source.path, source.s3_endpoint_override, source)


class ObjectStoreParquet:
    """A :class:`~flightlab.engine.reading.SourceReader` of parquet objects in
    S3. The engine makes one per source and request: the objects are found
    once (a HEAD, and for a prefix one listing) and their schema read once."""

    def __init__(self, uri: str, endpoint_override: str | None, source: DataSource | None = None):
        self.uri = uri.rstrip("/")
        self._override = endpoint_override
        self._source = source
        self._endpoint: S3Endpoint | None = None
        self._dataset: ds.Dataset | None = None

    @property
    def description(self) -> str:
        return self.uri

    def column_names(self, database: duckdb.DuckDBPyConnection) -> tuple[str, ...]:
        return tuple(self.dataset().schema.names)

    def read(
        self,
        database: duckdb.DuckDBPyConnection,
        columns: Sequence[str],
        timestamp_column: str,
        window: TimeWindow,
    ) -> FetchedRows:
        """The objects' rows of ``columns`` in (a superset of) ``window``,
        fetched into a new table of ``database``."""
        dataset = self.dataset()
        missing = [c for c in dict.fromkeys(columns) if c not in dataset.schema.names]
        if missing:
            names = ", ".join(map(repr, missing))
            raise MissingSourceColumnError(f"{self.uri} has no column {names}")
        columns = list(dict.fromkeys(columns))
        row_filter = time_filter(dataset.schema, timestamp_column, window)
        scanner = dataset.scanner(columns=columns, filter=row_filter, batch_size=SCAN_BATCH_ROWS)
        n = next(_tables)
        table, scan = f"__flightlab_s3_{n}", f"__flightlab_s3_scan_{n}"
        with self._errors_named():
            size = _estimated_bytes(dataset, columns, row_filter)
            if size <= _memory_limit(database) * ARROW_SHARE:
                fetched = scanner.to_table()
                ids = pa.array(np.arange(fetched.num_rows, dtype=np.int64))
                database.register(table, fetched.append_column(ROW_ID, ids))
                return FetchedRows(self.uri, table, arrow=True)
            database.register(scan, _numbered(scanner.to_reader()))
            try:
                database.execute(
                    f"CREATE TEMP TABLE {sql_name(table)} AS SELECT * FROM {sql_name(scan)}"
                )
            finally:
                database.unregister(scan)
        return FetchedRows(self.uri, table)

    def arrow_schema(self, database: duckdb.DuckDBPyConnection) -> pa.Schema:
        """The schema Feast's dask store starts from in a retrieval by dates
        (:mod:`~flightlab.engine.by_dates`): the object's own, pandas metadata
        and all. As for local files, the engine cannot give the dask store's
        answer on several objects (a partition each) or on one large enough
        for dask to split."""
        dataset = self.dataset()
        if len(dataset.files) > 1:
            raise CannotReproduce(f"{self.uri}: a prefix of parquet objects")
        with self._errors_named():
            metadata = next(iter(dataset.get_fragments())).metadata
        sizes = [metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)]
        if len(sizes) > 1 and sum(sizes) > DASK_SPLIT_BYTES:
            raise CannotReproduce(f"{self.uri}: large enough for dask to split it")
        return dataset.schema

    def whole_microseconds(self, database: duckdb.DuckDBPyConnection, columns: list[str]) -> bool:
        """Whether ``columns`` (nanosecond timestamps) hold whole microseconds only."""
        with self._errors_named():
            return whole_microseconds(self.dataset().to_batches(columns=columns))

    def dataset(self) -> ds.Dataset:
        """The source's objects as a pyarrow dataset (found on first use)."""
        if self._dataset is None:
            with self._errors_named():
                filesystem = s3_filesystem(self.endpoint())
                paths = self._paths(filesystem)
                self._dataset = ds.dataset(paths, format="parquet", filesystem=filesystem)
        return self._dataset

    def version(self) -> tuple[tuple[str, int, str], ...]:
        """What changes when any of the source's objects does: each object's
        key, size and ETag (a HEAD each, made a few at a time; no body is
        read, not even a footer: no dataset is made). S3 gives a rewritten
        object a new ETag even within the second its modification time is
        counted in."""

        def tagged(path: str) -> tuple[str, int, str]:
            with filesystem.open_input_file(path) as file:
                etag = (file.metadata() or {}).get("ETag", b"").decode()
                return (path, file.size(), etag)

        with self._errors_named(), ThreadPoolExecutor(VERSION_HEADS) as heads:
            filesystem = s3_filesystem(self.endpoint())
            return tuple(heads.map(tagged, self._paths(filesystem)))

    def endpoint(self) -> S3Endpoint:
        if self._endpoint is None:
            try:
                credentials = self._source.resolve_credentials() if self._source else None
            except Exception as exc:  # Feast's CredentialResolutionError, a provider's own
                raise OfflineStoreCredentialsError(
                    f"the credentials of {self.uri} could not be resolved from its "
                    f"connection_ref (a server configuration problem): {type(exc).__name__}"
                ) from None
            self._endpoint = S3Endpoint.of(self._override, credentials)
        return self._endpoint

    def _paths(self, filesystem: pafs.FileSystem) -> list[str]:
        """The object itself, or every ``*.parquet`` object below the prefix
        (as the engine reads a local folder: ``**/*.parquet``)."""
        path = self.uri[len(SCHEME) :]
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [path]
        if info.type == pafs.FileType.NotFound:
            raise SourceObjectNotFoundError(f"there is no object or prefix {self.uri} {self._at()}")
        listed = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
        found = sorted(i.path for i in listed if i.is_file and i.path.endswith(".parquet"))
        if not found:
            raise SourceObjectNotFoundError(f"no parquet object below {self.uri} {self._at()}")
        return found

    def _at(self) -> str:  # where the objects were looked for
        return f"at {self._endpoint.describe()}" if self._endpoint else ""

    @contextmanager
    def _errors_named(self) -> Iterator[None]:
        """pyarrow's S3 errors as flightlab's: unreachable, refused, not there."""
        try:
            yield
        except duckdb.OutOfMemoryException as exc:
            raise ResourceExhaustedError(
                f"the engine ran out of memory fetching {self.uri}; raise "
                f"--engine-memory-limit: {shortened(str(exc), 300)}"
            ) from None
        except (OSError, pa.ArrowException, duckdb.Error) as exc:
            named = named_error(exc, self.uri, self._endpoint)
            if named is exc:
                raise
            raise named from exc


def _estimated_bytes(
    dataset: ds.Dataset, columns: Sequence[str], row_filter: ds.Expression | None
) -> int:
    """About the Arrow size of ``columns`` in the row groups ``row_filter``
    keeps (read from the footers; the scan reuses them): each column chunk's
    uncompressed size, but at least its values at their Arrow width (a
    dictionary- or run-length-encoded chunk is smaller than its decoded values;
    a dictionary of strings still counts as encoded)."""
    wanted, total = set(columns), 0
    widths = {f.name: _arrow_width(f.type) for f in dataset.schema}
    for fragment in dataset.get_fragments():
        kept = fragment.subset(row_filter) if row_filter is not None else fragment
        metadata = fragment.metadata
        for group in kept.row_groups:
            chunks = metadata.row_group(group.id)
            for j in range(chunks.num_columns):
                chunk = chunks.column(j)
                name = chunk.path_in_schema.split(".")[0]
                if name in wanted:
                    decoded = chunk.num_values * widths.get(name, 0)
                    total += max(chunk.total_uncompressed_size, decoded)
    return total


def _arrow_width(kind: pa.DataType) -> int:
    """Bytes a value of ``kind`` takes in Arrow at least (offsets for variable ones)."""
    try:
        return max(kind.bit_width // 8, 1)
    except ValueError:  # not fixed-width: its offsets
        return 4


_SIZE = re.compile(r"([\d.]+)\s*([KMGTP]?i?B|bytes)")
_UNITS = {"bytes": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "PB": 1e15,
          "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50}  # fmt: skip


def _memory_limit(database: duckdb.DuckDBPyConnection) -> float:
    """The database's memory limit in bytes, as DuckDB prints it ("1.8 GiB")."""
    text = database.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    match = _SIZE.fullmatch(str(text).strip())
    return float(match[1]) * _UNITS[match[2]] if match else 0.0


def _numbered(batches: pa.RecordBatchReader) -> pa.RecordBatchReader:
    """``batches`` with a ROW_ID column numbering their rows from 0. (Not
    DuckDB's ``rowid`` of the table: DuckDB 1.5.6 fails to bind it in some
    of the engine's plans, "Failed to bind column reference".)"""
    schema = batches.schema.append(pa.field(ROW_ID, pa.int64()))

    def numbered() -> Iterator[pa.RecordBatch]:
        start = 0
        for batch in batches:
            ids = pa.array(np.arange(start, start + batch.num_rows, dtype=np.int64))
            start += batch.num_rows
            yield pa.RecordBatch.from_arrays([*batch.columns, ids], schema=schema)

    return pa.RecordBatchReader.from_batches(schema, numbered())


@dataclass(frozen=True)
class FetchedRows:
    """A :class:`~flightlab.engine.reading.SourceRead`: a table of the request's
    database (``arrow``: an Arrow table registered in it) holding the rows
    fetched from object storage."""

    description: str
    table: str
    arrow: bool = False

    def read_sql(self, with_row_ids: bool = False) -> str:
        if self.arrow and not with_row_ids:
            # A pull. DuckDB 1.5.6 fails with an internal error ("Failed to
            # cast expression to type") planning a pull_latest without a
            # created column over an Arrow scan: its top-n window rewrite
            # chokes on the CAST bounds pushed into the scan. Behind a union
            # the bounds reach the scan and the rewrite is left out.
            name = sql_name(self.table)
            return f"(SELECT * FROM {name} UNION ALL SELECT * FROM {name} WHERE false)"
        return sql_name(self.table)

    def row_id_columns(self) -> list[str]:
        return [ROW_ID]


# --- the time filter ---------------------------------------------------------------------

# A timestamp unit's ticks per microsecond, as (multiply, divide).
_PER_MICROSECOND = {"s": (1, 1_000_000), "ms": (1, 1_000), "us": (1, 1), "ns": (1_000, 1)}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def time_filter(schema: pa.Schema, column: str, window: TimeWindow) -> ds.Expression | None:
    """A filter keeping every row with ``column`` in ``window`` (and maybe a
    few more: the query applies the exact bounds again); None for no bound.

    The bounds are integers in the column's own type, unit and zone: pyarrow
    refuses to compare a zoned timestamp with a naive one, and compares a
    literal of another unit by casting the column, after which it skips no
    row group. The start is floored and the end plus a microsecond ceiled to
    the unit, so that a nanosecond that the query truncates to the end is
    kept. A naive column holds UTC (as Feast's stores read it). A column
    that is not a timestamp gets no filter.
    """
    if column not in schema.names or (window.start is None and window.end is None):
        return None
    kind = schema.field(column).type
    if not pa.types.is_timestamp(kind):
        return None
    multiply, divide = _PER_MICROSECOND[kind.unit]
    bounds = []
    # A bound past the unit's range (nanoseconds end in 2262) bounds nothing.
    if window.start is not None:
        ticks = (_epoch_microseconds(window.start) * multiply) // divide
        if ticks > _INT64_MIN:
            bounds.append(ds.field(column) >= pa.scalar(min(ticks, _INT64_MAX), kind))
    if window.end is not None:
        ticks = -((-(_epoch_microseconds(window.end) + 1) * multiply) // divide)
        if ticks < _INT64_MAX:
            bounds.append(ds.field(column) <= pa.scalar(max(ticks, _INT64_MIN), kind))
    if not bounds:
        return None
    return bounds[0] if len(bounds) == 1 else bounds[0] & bounds[1]


def _epoch_microseconds(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
