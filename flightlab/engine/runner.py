"""flightlab's engine: answers retrievals with one DuckDB query per request.

Each request gets a DuckDB database of its own
(:mod:`~flightlab.engine.database`). The entity rows are registered as the
uploaded Arrow table, each source is read as its reader says (only the
columns and event times the request can use: :mod:`~flightlab.engine.sources`),
one SQL query answers the request (:mod:`~flightlab.engine.sql`), and its
result is read batch by batch as DuckDB produces it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from feast.feature_view import FeatureView
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig

from flightlab.engine import by_dates, sql
from flightlab.engine.database import RequestDatabases
from flightlab.engine.entities import prepared_entity_rows
from flightlab.engine.on_demand import with_on_demand_features
from flightlab.engine.postgres.engine import PostgresEngine
from flightlab.engine.postgres.source import PostgresSource
from flightlab.engine.reading import SourceReader, TimeWindow
from flightlab.engine.results import FLIGHTLAB, ResultStream
from flightlab.engine.settings import EngineSettings
from flightlab.engine.sources import source_reader
from flightlab.engine.usage import EngineUsage, UsageCounters
from flightlab.errors import MalformedEntityDataError, MissingSourceColumnError


class Engine:
    """Answers get_historical_features and the pulls where it can; a method
    returns None where it cannot, and the caller asks Feast's store instead."""

    def __init__(self, settings: EngineSettings | None = None):
        self.settings = settings or EngineSettings()
        self._usage = UsageCounters()
        self._databases = RequestDatabases(self.settings, self._usage)
        # PostgreSQL sources: the server's connection pools, plans A and B.
        self.postgres = PostgresEngine(self.settings.postgres, self._databases, self._usage)

    def usage(self) -> EngineUsage:
        """What the engine holds and has read so far (see :class:`EngineUsage`)."""
        return self._usage.snapshot()

    def close(self) -> None:
        """Close the connections the engine keeps (a stopped server's)."""
        self.postgres.close()

    def reader(self, config: RepoConfig, data_source) -> SourceReader | None:
        """How the engine reads ``data_source`` of a repo of ``config``; None
        when the repo's Feast store answers for it."""
        return source_reader(data_source, config, self.settings.mode, self.postgres)

    # --- get_historical_features ------------------------------------------------

    def historical(
        self,
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        on_demand_views: list[OnDemandFeatureView],
        entity_rows: pa.Table | str,
        full_feature_names: bool,
    ) -> ResultStream | None:
        """The retrieval for ``entity_rows``: a table, or a SQL query (which
        the engine runs where the sources are: PostgreSQL)."""
        if any(v.mode == "substrait" for v in on_demand_views):
            return None  # Feast computes those inside its own query
        readers = [self.reader(config, view.batch_source) for view in feature_views]
        if self.postgres.answers(readers):
            answer = self.postgres.historical
            if isinstance(entity_rows, str):
                answer = self.postgres.historical_sql
            return answer(
                config, feature_views, readers, feature_refs, on_demand_views, entity_rows,
                full_feature_names,
            )  # fmt: skip
        if isinstance(entity_rows, str):
            return None
        prepared = self._prepare_historical(
            config, feature_views, feature_refs, entity_rows, full_feature_names
        )
        if prepared is None:
            return None
        database, close, query, total_rows = prepared
        try:
            schema, batches = self._databases.read(database, query)
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
        database, close, query, _ = prepared
        try:
            return "\n".join(row[1] for row in database.execute(f"EXPLAIN {query}").fetchall())
        finally:
            close()

    def _prepare_historical(
        self,
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_rows: pa.Table,
        full_feature_names: bool,
    ):
        """A database holding the entity rows, its closer, the query that
        answers, and the rows it answers with; None where the engine cannot
        (or answers otherwise: PostgreSQL sources have plans of their own)."""
        readers = [self.reader(config, view.batch_source) for view in feature_views]
        if any(reader is None or isinstance(reader, PostgresSource) for reader in readers):
            return None
        entity_rows, timestamp = prepared_entity_rows(entity_rows)
        times = _time_range(entity_rows.column(timestamp))
        database, close = self._databases.open()
        try:
            views = [
                _view_query(database, view, reader, feature_refs, full_feature_names, times)
                for view, reader in zip(feature_views, readers, strict=True)
            ]
            _check_join_keys(entity_rows, feature_views, views)
            database.register(sql.ENTITY_TABLE, entity_rows)
        except BaseException:
            close()
            raise
        query = sql.historical_sql(entity_rows.column_names, timestamp, views)
        return database, close, query, entity_rows.num_rows

    def historical_by_dates(
        self,
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        on_demand_views: list[OnDemandFeatureView],
        full_feature_names: bool,
        start_date: datetime | None,
        end_date: datetime | None,
    ) -> ResultStream | None:
        """A retrieval by dates with no entity rows: Feast's file (dask)
        store's snapshot at the end date (:mod:`~flightlab.engine.by_dates`)."""
        readers = by_dates.by_dates_readers(config, feature_views, self.settings.mode)
        if readers is None:
            return None
        _, end = by_dates.date_range(feature_views, start_date, end_date)
        return by_dates.answer_by_dates(
            self._databases, feature_views, readers, feature_refs, on_demand_views,
            full_feature_names, end,
        )  # fmt: skip

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
        reader = self.reader(config, data_source)
        if reader is None:
            return None
        if self.postgres.answers([reader]):
            return self.postgres.pull(
                config, reader, join_key_columns, feature_name_columns, timestamp_field,
                created_timestamp_column, start_date, end_date, latest,
            )  # fmt: skip
        columns = [*join_key_columns, *feature_name_columns, timestamp_field]
        if created_timestamp_column:
            columns.append(created_timestamp_column)
        database, close = self._databases.open()
        try:
            source = reader.read(
                database, columns, timestamp_field, TimeWindow(start_date, end_date)
            )
            query = sql.pull_sql(
                source,
                columns,
                timestamp_field,
                created_timestamp_column,
                start_date,
                end_date,
                latest_by=list(join_key_columns) if latest else None,
            )
            schema, batches = self._databases.read(database, query)
        except BaseException:
            close()
            raise
        return ResultStream(schema, batches, FLIGHTLAB, close=close)


def _time_range(timestamps: pa.ChunkedArray) -> tuple[datetime | None, datetime | None]:
    """The earliest and latest entity timestamps (None for no rows)."""
    bounds = pc.min_max(timestamps)
    return bounds["min"].as_py(), bounds["max"].as_py()


def _window(ttl: timedelta | None, times: tuple[datetime | None, datetime | None]) -> TimeWindow:
    """The source rows a view can give entity rows spanning ``times``: at or
    before the latest, and within the TTL of the earliest (a TTL of None or
    0 sets no lower bound)."""
    earliest, latest = times
    if latest is None:  # no entity rows: nothing to narrow
        return TimeWindow()
    return TimeWindow(earliest - ttl if ttl and earliest else None, latest)


def _view_query(
    database: duckdb.DuckDBPyConnection,
    view: FeatureView,
    reader: SourceReader,
    feature_refs: list[str],
    full_feature_names: bool,
    times: tuple[datetime | None, datetime | None],
) -> sql.ViewQuery:
    """One view's part of the query, as Feast's duckdb store reads the view:
    features in reference order, named ``alias__feature`` with full names;
    the source read for the columns and the event times the view needs."""
    prefix = view.projection.name_to_use()
    features = [ref.split(":", 1)[1] for ref in feature_refs if ref.startswith(prefix + ":")]
    output_prefix = view.projection.name_alias or view.name
    batch_source = view.batch_source
    join_keys = view.projection.join_key_map or {c.name: c.name for c in view.entity_columns}
    created = batch_source.created_timestamp_column or None
    wanted = [batch_source.timestamp_field, *join_keys, *features, *([created] if created else [])]
    source_columns = _source_columns(
        view.name, reader, database, batch_source.field_mapping, wanted
    )
    needed = tuple(source_columns.values())
    window = _window(view.ttl, times)
    source = reader.read(database, needed, source_columns[batch_source.timestamp_field], window)
    return sql.ViewQuery(
        source=source,
        source_columns=needed,
        field_mapping=tuple(batch_source.field_mapping.items()),
        timestamp_field=batch_source.timestamp_field,
        created_timestamp_column=created,
        join_keys=tuple(join_keys.items()),
        features=tuple((f, f"{output_prefix}__{f}" if full_feature_names else f) for f in features),
        ttl=view.ttl,
    )


def _source_columns(
    view_name: str,
    reader: SourceReader,
    database: duckdb.DuckDBPyConnection,
    field_mapping: dict[str, str],
    wanted: Sequence[str],
) -> dict[str, str]:
    """The source column behind each wanted view column (``field_mapping``
    renames source columns; an entry naming a column the source lacks is
    ignored); a MissingSourceColumnError naming the missing ones."""
    by_view_name = {field_mapping.get(c, c): c for c in reader.column_names(database)}
    missing = [c for c in dict.fromkeys(wanted) if c not in by_view_name]
    if missing:
        raise MissingSourceColumnError(
            f"the source of feature view {view_name!r} ({reader.description}) has no "
            f"column {', '.join(map(repr, missing))}"
        )
    return {c: by_view_name[c] for c in dict.fromkeys(wanted)}


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
