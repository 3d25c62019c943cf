"""flightlab's engine: answers retrievals over parquet sources with DuckDB.

Each request gets a DuckDB database of its own (its threads, memory limit and
spill folder), so requests run side by side with no lock between them. The
entity rows are registered as the uploaded Arrow table, one SQL query answers
the request, and its result is read batch by batch as DuckDB produces it.
"""

from __future__ import annotations

import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
from feast.feature_view import FeatureView
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig

from flightlab.engine import sql
from flightlab.engine.entities import prepared_entity_rows
from flightlab.engine.on_demand import with_on_demand_features
from flightlab.engine.results import FLIGHTLAB, ResultStream
from flightlab.engine.settings import (
    REPLACEABLE_STORES,
    SAME_ANSWER_STORES,
    EngineMode,
    EngineSettings,
)
from flightlab.engine.sources import ParquetSource, parquet_source
from flightlab.engine.usage import EngineUsage, UsageCounters
from flightlab.errors import MalformedEntityDataError, ResourceExhaustedError, shortened

# Rows DuckDB hands over per batch; the server cuts them to its own bounds.
_READ_BATCH_ROWS = 65_536


class Engine:
    """Answers get_historical_features and the pulls where it can; a method
    returns None where it cannot, and the caller asks Feast's store instead."""

    def __init__(self, settings: EngineSettings | None = None):
        self.settings = settings or EngineSettings()
        self._usage = UsageCounters()
        check_resources(self.settings)

    def usage(self) -> EngineUsage:
        """What the engine holds and has read so far (see :class:`EngineUsage`)."""
        return self._usage.snapshot()

    def serves(self, config: RepoConfig) -> bool:
        """Whether the engine answers for a repo of this offline store type."""
        store_type = config.offline_store.type
        if self.settings.mode is EngineMode.AUTO:
            return store_type in SAME_ANSWER_STORES
        return self.settings.mode is EngineMode.FLIGHTLAB and store_type in REPLACEABLE_STORES

    # --- get_historical_features ------------------------------------------------

    def historical(
        self,
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        on_demand_views: list[OnDemandFeatureView],
        entity_rows: pa.Table,
        full_feature_names: bool,
    ) -> ResultStream | None:
        if any(v.mode == "substrait" for v in on_demand_views):
            return None  # Feast computes those inside its own query
        prepared = self._prepare_historical(
            config, feature_views, feature_refs, entity_rows, full_feature_names
        )
        if prepared is None:
            return None
        database, query, total_rows = prepared
        close = self._closer(database)
        try:
            with self._memory_errors_named():
                reader = database.sql(query).to_arrow_reader(_READ_BATCH_ROWS)
            batches = self._counted(reader)
            schema = reader.schema
            if on_demand_views:
                # Reads the first batch: a transformation may fail right here.
                batches, schema = with_on_demand_features(
                    batches, schema, on_demand_views, feature_refs, full_feature_names
                )
        except BaseException:
            close()
            raise
        return ResultStream(schema, batches, FLIGHTLAB, total_rows=total_rows, close=close)

    def explain_historical(
        self,
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_rows: pa.Table,
        full_feature_names: bool = False,
    ) -> str | None:
        """DuckDB's physical plan for a retrieval (None where the engine would
        not answer it): what an operator reads to see how a join runs."""
        prepared = self._prepare_historical(
            config, feature_views, feature_refs, entity_rows, full_feature_names
        )
        if prepared is None:
            return None
        database, query, _ = prepared
        try:
            return "\n".join(row[1] for row in database.execute(f"EXPLAIN {query}").fetchall())
        finally:
            self._closer(database)()

    def _prepare_historical(
        self,
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_rows: pa.Table,
        full_feature_names: bool,
    ) -> tuple[duckdb.DuckDBPyConnection, str, int] | None:
        """A database holding the entity rows, and the query that answers."""
        if not self.serves(config):
            return None
        sources = [parquet_source(view.batch_source, config.repo_path) for view in feature_views]
        if any(source is None for source in sources):
            return None
        entity_rows, timestamp = prepared_entity_rows(entity_rows)
        database = self._connect()
        try:
            views = [
                _view_query(database, view, source, feature_refs, full_feature_names)
                for view, source in zip(feature_views, sources, strict=True)
            ]
            _check_join_keys(entity_rows, feature_views, views)
            database.register(sql.ENTITY_TABLE, entity_rows)
        except BaseException:
            self._closer(database)()
            raise
        query = sql.historical_sql(entity_rows.column_names, timestamp, views)
        return database, query, entity_rows.num_rows

    # --- pull_latest / pull_all ------------------------------------------------------

    def pull(
        self,
        config: RepoConfig,
        data_source,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: datetime | None,
        end_date: datetime | None,
        latest: bool,
    ) -> ResultStream | None:
        """The rows of ``data_source`` as ``pull_all_from_table_or_query`` (or,
        with ``latest``, ``pull_latest_from_table_or_query``) returns them."""
        source = parquet_source(data_source, config.repo_path) if self.serves(config) else None
        if source is None:
            return None
        columns = [*join_key_columns, *feature_name_columns, timestamp_field]
        if created_timestamp_column:
            columns.append(created_timestamp_column)
        query = sql.pull_sql(
            source,
            columns,
            timestamp_field,
            created_timestamp_column,
            start_date,
            end_date,
            latest_by=list(join_key_columns) if latest else None,
        )
        database = self._connect()
        close = self._closer(database)
        try:
            with self._memory_errors_named():
                reader = database.sql(query).to_arrow_reader(_READ_BATCH_ROWS)
        except BaseException:
            close()
            raise
        return ResultStream(reader.schema, self._counted(reader), FLIGHTLAB, close=close)

    # --- DuckDB ----------------------------------------------------------------------

    def _connect(self) -> duckdb.DuckDBPyConnection:
        spill_root = self.settings.spill_dir or Path(tempfile.gettempdir()) / "flightlab-spill"
        spill_root.mkdir(parents=True, exist_ok=True)
        # DuckDB names its spill files the same in every database and deletes its
        # temp directory when the database closes: requests (and replicas) sharing
        # one folder would overwrite each other's spill files. Each gets its own
        # subfolder of the root, which DuckDB creates on the first spill and removes
        # on close (it makes no parent folders).
        config = {
            "temp_directory": str(spill_root / f"request-{uuid.uuid4().hex}"),
            **_resource_config(self.settings),
        }
        database = duckdb.connect(":memory:", config=config)
        self._usage.opened()
        # TIMESTAMPTZ values come back as Arrow timestamps in UTC.
        database.execute("SET TimeZone = 'UTC'")
        # DuckDB 1.5 may plan an ASOF join against a registered Arrow table as
        # a nested loop (minutes for 100k x 1M rows); this keeps the sort-merge plan.
        database.execute("SET asof_loop_join_threshold = 0")
        # A server inside a notebook kernel would otherwise draw DuckDB's progress
        # bar under whichever cell ran last, for every query slower than 2 s.
        database.execute("SET enable_progress_bar = false")
        return database

    def _closer(self, database: duckdb.DuckDBPyConnection) -> Callable[[], None]:
        """Closes ``database`` once, however often it is called."""
        lock = threading.Lock()
        still_open = [True]

        def close() -> None:
            with lock:
                if not still_open[0]:
                    return
                still_open[0] = False
            try:
                database.close()
            finally:
                self._usage.closed()

        return close

    def _counted(self, reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
        batches = iter(reader)
        while True:
            with self._memory_errors_named():
                batch = next(batches, None)
            if batch is None:
                return
            self._usage.read(batch.num_rows)
            yield batch

    @contextmanager
    def _memory_errors_named(self) -> Iterator[None]:
        """DuckDB's out-of-memory error (a join that could not spill enough)
        as the server's resource error, naming the setting to change."""
        try:
            yield
        except duckdb.OutOfMemoryException as exc:
            limit = self.settings.memory_limit or "DuckDB's default, 80% of RAM"
            raise ResourceExhaustedError(
                f"the engine ran out of memory for this request (memory limit per "
                f"request: {limit}); raise --engine-memory-limit, or make room in the "
                f"spill folder: {shortened(str(exc), 300)}"
            ) from exc


def _resource_config(settings: EngineSettings) -> dict[str, str | int]:
    config: dict[str, str | int] = {}
    if settings.threads is not None:
        config["threads"] = settings.threads
    if settings.memory_limit is not None:
        config["memory_limit"] = settings.memory_limit
    return config


def check_resources(settings: EngineSettings) -> None:
    """A memory limit DuckDB cannot read fails when the server is set up,
    not on every request."""
    config = _resource_config(settings)
    if not config:
        return
    try:
        duckdb.connect(":memory:", config=config).close()
    except duckdb.Error as exc:
        raise ValueError(
            f"the engine's resources are not valid for DuckDB ({config}): {exc}"
        ) from None


def _view_query(
    database: duckdb.DuckDBPyConnection,
    view: FeatureView,
    source: ParquetSource,
    feature_refs: list[str],
    full_feature_names: bool,
) -> sql.ViewQuery:
    """One view's part of the query, as Feast's duckdb store reads the view:
    features in reference order, named ``alias__feature`` with full names."""
    prefix = view.projection.name_to_use()
    features = [ref.split(":", 1)[1] for ref in feature_refs if ref.startswith(prefix + ":")]
    output_prefix = view.projection.name_alias or view.name
    batch_source = view.batch_source
    join_keys = view.projection.join_key_map or {c.name: c.name for c in view.entity_columns}
    query = sql.ViewQuery(
        source=source,
        source_columns=tuple(database.sql(f"SELECT * FROM {source.read_sql()} LIMIT 0").columns),
        field_mapping=tuple(batch_source.field_mapping.items()),
        timestamp_field=batch_source.timestamp_field,
        created_timestamp_column=batch_source.created_timestamp_column or None,
        join_keys=tuple(join_keys.items()),
        features=tuple((f, f"{output_prefix}__{f}" if full_feature_names else f) for f in features),
        ttl=view.ttl,
    )
    _check_source_columns(view.name, query)
    return query


def _check_source_columns(view_name: str, query: sql.ViewQuery) -> None:
    mapping = dict(query.field_mapping)
    available = {mapping.get(c, c) for c in query.source_columns}
    wanted = [
        query.timestamp_field,
        *(k for k, _ in query.join_keys),
        *(f for f, _ in query.features),
    ]
    if query.created_timestamp_column:
        wanted.append(query.created_timestamp_column)
    missing = [c for c in dict.fromkeys(wanted) if c not in available]
    if missing:
        raise ValueError(
            f"the source of feature view {view_name!r} ({query.source.pattern}) has no "
            f"column {', '.join(map(repr, missing))}"
        )


def _check_join_keys(
    entity_rows: pa.Table, feature_views: list[FeatureView], views: list[sql.ViewQuery]
) -> None:
    for view, query in zip(feature_views, views, strict=True):
        for _, entity_column in query.join_keys:
            if entity_column not in entity_rows.column_names:
                raise MalformedEntityDataError(
                    f"the entity data has no column {entity_column!r}, which feature view "
                    f"{view.name!r} joins on; its columns are {entity_rows.column_names}"
                )
