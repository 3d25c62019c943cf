"""Spark's results streamed from parquet files, never collected on the driver.

Feast's ``SparkRetrievalJob.to_arrow`` collects the whole result on Spark's
driver (``toPandas``), then holds it again in Python: a result larger than
``spark.driver.memory`` fails. Here Spark writes the job's result as parquet
instead, each executor its own partitions, and the server streams the files
batch by batch with pyarrow, a row group at a time:

- with a ``staging_location`` in the store's config, through Feast's own
  ``to_remote_storage()`` (a new folder named by a uuid under it; a local path,
  or ``s3://`` read through pyarrow's S3 filesystem);
- without one, into a new folder under the engine's spill folder (or the
  system's temporary folder), which must be a folder Spark's executors write
  to the server's disk: local mode, or a mount they share.

Either folder is removed when the stream ends, however it ends (its last
batch read, the client gone midway, an error): it holds one answer's copy,
under a name only this server knows, and keeping it would fill the staging
location by one result per request. A server killed midway leaves it behind:
in the spill folder, the next server to start on the host removes it
(:mod:`flightlab.engine.spill`); in a staging location, it stays.

What the client gets is what Feast's local store answers for the same call:
with a staging location, Feast reads the same files (their parquet types);
without one, Feast's answer went through ``toPandas``, so the parquet types are
cast as pandas would have made them (integers with a null anywhere become
float64, timestamps naive nanoseconds in the session's time zone, every field
nullable). On-demand feature views are applied batch by batch, by Feast's own
code (they are row-wise transformations).

Everything that runs Spark (:func:`staged_result`) runs under the server's one
Spark call at a time; the files are read after, outside it.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from feast.infra.offline_stores.offline_store import RetrievalJob

from flightlab.engine.results import FEAST, ResultStream
from flightlab.engine.spill import default_spill_root, owned_folder

logger = logging.getLogger(__name__)

READ_BATCH_ROWS = 65_536
# Staging locations whose files the server reads (Feast's to_remote_storage writes more).
_READABLE_STAGING = ("/", "s3://")
# Our own writes: row groups of 32 MB, so that a reader holds little at once.
_ROW_GROUP_BYTES = str(32 * 1024 * 1024)


def streamable(job: RetrievalJob) -> bool:
    """Whether ``job`` is Feast's Spark job and its files can reach the server:
    staged where the config says, or written by Spark in local mode to the
    server's own disk. On a cluster without a staging location the executors'
    files would be on their disks: Feast's ``to_arrow`` answers, as before."""
    if type(job).__name__ != "SparkRetrievalJob":
        return False
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import SparkRetrievalJob

    if not isinstance(job, SparkRetrievalJob):
        return False
    staging = getattr(job._config.offline_store, "staging_location", None)
    if staging:
        if staging.startswith(_READABLE_STAGING):
            return True
        logger.warning(
            "Spark's result is read whole (staging_location %s: flightlab streams "
            "local paths and s3:// only)",
            staging,
        )
        return False
    master = job.spark_session.conf.get("spark.master", "") or ""
    if master.startswith("local"):
        return True
    logger.warning(
        "Spark's result is collected on its driver (master %s, no staging_location): "
        "set the store's staging_location to stream it",
        master,
    )
    return False


@dataclass
class StagedResult:
    """A job's result written as parquet files, and how to read and remove them."""

    files: list[str]
    folder: str
    filesystem: pafs.FileSystem
    as_feast_staged: bool  # Feast's own answer read these same files
    session_time_zone: str = "UTC"
    spark_timestamps: frozenset[str] = field(default_factory=frozenset)

    def remove(self) -> None:
        """Delete the folder (logged, never raised: the answer is already sent)."""
        try:
            self.filesystem.delete_dir(self.folder)
            logger.debug("removed Spark's result folder %s", self.folder)
        except FileNotFoundError:
            pass
        except Exception as exc:
            logger.warning("could not remove Spark's result folder %s: %s", self.folder, exc)


def staged_result(job: RetrievalJob, spill_root: Path | None) -> StagedResult:
    """Have Spark write ``job``'s result as parquet (runs Spark: hold the Spark call)."""
    session = job.spark_session
    time_zone = session.conf.get("spark.sql.session.timeZone") or "UTC"
    staging = getattr(job._config.offline_store, "staging_location", None)
    if staging:
        paths = job.to_remote_storage()
        filesystem, files = _filesystem_of(paths, job._config.offline_store)
        folder = _staged_folder(files, staging)
        staged = StagedResult(_parquet_only(files), folder, filesystem, as_feast_staged=True)
    else:
        folder = str(_fresh_folder(spill_root))
        sdf = job.to_spark_df()
        timestamps = frozenset(
            f.name for f in sdf.schema.fields if f.dataType.typeName() == "timestamp"
        )
        try:
            sdf.write.option("parquet.block.size", _ROW_GROUP_BYTES).parquet(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        files = sorted(str(p) for p in Path(folder).glob("*.parquet"))
        filesystem = pafs.LocalFileSystem()
        staged = StagedResult(files, folder, filesystem, False, time_zone, timestamps)
    logger.info("Spark wrote the result as %d parquet file(s) in %s", len(staged.files), folder)
    return staged


def result_stream(job: RetrievalJob, staged: StagedResult) -> ResultStream:
    """The staged files as a stream with the schema Feast's local answer has;
    the folder is removed when the stream is closed (and here, if this fails)."""
    try:
        footers = [_footer(staged, path) for path in staged.files]
        if not footers:
            raise RuntimeError(f"Spark wrote no parquet file in {staged.folder}")
        target = _target_schema(staged, footers)
        schema, tables = _transformed(job, _read_tables(staged, target), target)
    except BaseException:
        staged.remove()
        raise
    return ResultStream(
        schema,
        _batches(tables),
        FEAST,
        total_rows=sum(f.num_rows for f in footers),
        close=staged.remove,
    )


# --- where the files are --------------------------------------------------------


def _fresh_folder(spill_root: Path | None) -> Path:
    root = default_spill_root(spill_root)
    root.mkdir(parents=True, exist_ok=True)
    return owned_folder(root, "spark-result")  # Spark makes the folder itself


def _filesystem_of(paths: list[str], config: Any) -> tuple[pafs.FileSystem, list[str]]:
    """pyarrow's filesystem for Feast's staged paths, and the paths within it."""
    if paths and paths[0].startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_S3_ENDPOINT", "")
        region = getattr(config, "region", None) or os.environ.get("AWS_DEFAULT_REGION")
        options: dict[str, Any] = {"region": region or "us-east-1"}
        if endpoint:
            options["endpoint_override"] = endpoint.split("://", 1)[-1].rstrip("/")
            options["scheme"] = "https" if endpoint.startswith("https") else "http"
        files = [p.split("://", 1)[1] for p in paths]
        return pafs.S3FileSystem(**options), files
    return pafs.LocalFileSystem(), [p.removeprefix("file://") for p in paths]


def _staged_folder(files: list[str], staging: str) -> str:
    """The one folder ``to_remote_storage`` made under ``staging`` (so, removable)."""
    folders = {f.rsplit("/", 1)[0] for f in files}
    root = staging.split("://", 1)[-1].rstrip("/")
    if staging.startswith("/"):
        root = os.path.abspath(staging)
    if len(folders) != 1:
        raise RuntimeError(f"Spark's staged files are not in one folder under {staging}")
    (folder,) = folders
    if folder.rsplit("/", 1)[0] != root:
        raise RuntimeError(f"Spark's staged folder {folder} is not directly under {staging}")
    return folder


def _parquet_only(files: list[str]) -> list[str]:
    return sorted(f for f in files if f.endswith(".parquet"))  # not _SUCCESS, .crc


# --- what the files hold ------------------------------------------------------------


@dataclass
class _Footer:
    path: str
    num_rows: int
    schema: pa.Schema
    nulls: dict[str, int]


def _footer(staged: StagedResult, path: str) -> _Footer:
    with staged.filesystem.open_input_file(path) as handle:
        metadata = pq.ParquetFile(handle).metadata
    schema = metadata.schema.to_arrow_schema()
    # Parquet's leaf columns, by path: a list column's leaf sits among them.
    leaves = {metadata.schema.column(i).path: i for i in range(metadata.num_columns)}
    nulls: dict[str, int] = {}
    for name in schema.names:
        if not pa.types.is_integer(schema.field(name).type):
            continue  # only integers change type with nulls
        index = leaves[name]
        groups = range(metadata.num_row_groups)
        counts = [_null_count(metadata.row_group(g).column(index)) for g in groups]
        nulls[name] = -1 if None in counts else sum(c or 0 for c in counts)
    return _Footer(path, metadata.num_rows, schema, nulls)


def _null_count(column: Any) -> int | None:
    stats = column.statistics
    if stats is None or not stats.has_null_count:
        return None
    return stats.null_count


def _target_schema(staged: StagedResult, footers: list[_Footer]) -> pa.Schema:
    """The schema of Feast's local answer, before its on-demand views."""
    schema = footers[0].schema.remove_metadata()
    if staged.as_feast_staged:
        return schema  # Feast's pyarrow dataset over the same files: the first file's schema
    fields = []
    for f in schema:
        with_nulls = pa.types.is_integer(f.type) and _any_nulls(staged, footers, f.name)
        fields.append(pa.field(f.name, _pandas_type(f.type, with_nulls), nullable=True))
    return pa.schema(fields)


def _any_nulls(staged: StagedResult, footers: list[_Footer], name: str) -> bool:
    for footer in footers:
        count = footer.nulls.get(name, 0)
        if count < 0:  # a row group without statistics: count in the column itself
            with staged.filesystem.open_input_file(footer.path) as handle:
                count = pq.read_table(handle, columns=[name]).column(name).null_count
        if count > 0:
            return True
    return False


def _pandas_type(arrow_type: pa.DataType, with_nulls: bool) -> pa.DataType:
    """The type a parquet column gets through ``toPandas`` and ``Table.from_pandas``."""
    if pa.types.is_integer(arrow_type) and with_nulls:
        return pa.float64()  # NaN for null, as pandas holds them
    if pa.types.is_timestamp(arrow_type):
        return pa.timestamp("ns")
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return pa.list_(_pandas_type(arrow_type.value_type, False))  # item, not element
    return arrow_type


# --- reading -------------------------------------------------------------------------


def _read_tables(staged: StagedResult, target: pa.Schema) -> Iterator[pa.Table]:
    """Each file's row groups, batch by batch, as tables of ``target``."""
    for path in staged.files:
        with staged.filesystem.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS):
                yield _as_local(pa.Table.from_batches([batch]), target, staged)


def _as_local(table: pa.Table, target: pa.Schema, staged: StagedResult) -> pa.Table:
    if staged.as_feast_staged:
        return table.cast(target)
    columns = []
    for f in target:
        column = table.column(f.name)
        if f.name in staged.spark_timestamps and staged.session_time_zone not in ("UTC", "Z"):
            column = _local_wall_time(column, staged.session_time_zone)
        columns.append(column.cast(f.type, safe=False))
    return pa.Table.from_arrays(columns, schema=target)


def _local_wall_time(column: pa.ChunkedArray, time_zone: str) -> pa.ChunkedArray:
    """Spark's UTC instants as the session's wall time, naive, as ``toPandas`` gives them."""
    instants = column.cast(pa.timestamp("ns", tz="UTC")).cast(pa.timestamp("ns", tz=time_zone))
    return pc.local_timestamp(instants)


def _transformed(
    job: RetrievalJob, tables: Iterator[pa.Table], target: pa.Schema
) -> tuple[pa.Schema, Iterator[pa.Table]]:
    """The answer's schema and its tables, the job's on-demand views applied.

    Without them nothing is read yet. With them the first table is (the
    views' output types are what their code makes of real rows).
    """
    if not job.on_demand_feature_views:
        return target, tables
    first = _with_on_demand(job, next(tables, None) or target.empty_table())
    schema = first.schema
    rest = (_with_on_demand(job, t).cast(schema) for t in tables)
    return schema, _prepend(first, rest)


def _prepend(first: pa.Table, rest: Iterator[pa.Table]) -> Iterator[pa.Table]:
    yield first
    yield from rest


def _with_on_demand(job: RetrievalJob, table: pa.Table) -> pa.Table:
    """``table`` as Feast's ``to_arrow`` returns it: its own on-demand code, applied."""
    return _OneTable(job, table).to_arrow()


class _OneTable(RetrievalJob):
    """A job whose result is one table: Feast's ``to_arrow`` then applies the
    original job's on-demand views (the columns its metadata asked for)."""

    def __init__(self, job: RetrievalJob, table: pa.Table):
        super().__init__()
        self._job = job
        self._table = table

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        return self._table

    def _to_df_internal(self, timeout: int | None = None) -> Any:
        return self._table.to_pandas()

    @property
    def full_feature_names(self) -> bool:
        return self._job.full_feature_names

    @property
    def on_demand_feature_views(self) -> list[Any]:
        return self._job.on_demand_feature_views

    @property
    def metadata(self) -> Any:
        return self._job.metadata


def _batches(tables: Iterator[pa.Table]) -> Iterator[pa.RecordBatch]:
    for table in tables:
        yield from table.to_batches()
