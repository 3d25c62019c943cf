"""``PostgresEngine``: retrievals over ``PostgreSQLSource``s, with Feast's postgres store's answers.

For each retrieval it checks that it can give exactly the store's answer
(types it can cast, no key-text collision: else Feast's store answers),
chooses a plan (:mod:`.planner`), runs it, and casts each batch to the types
the store answers with. Each request leases one session from the server's
pool: plan A keeps it while its result streams, plan B only while it
fetches. One log line per request names the plan.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from flightlab.engine import sql
from flightlab.engine.database import RequestDatabases
from flightlab.engine.entities import event_timestamp_column, prepared_entity_rows
from flightlab.engine.on_demand import with_on_demand_features
from flightlab.engine.postgres import entity_sql as entity_sql_rows
from flightlab.engine.postgres import fetch, pit, pulls
from flightlab.engine.postgres.connections import Databases, Session, driver_available, where
from flightlab.engine.postgres.planner import PlanChoice, choose
from flightlab.engine.postgres.settings import PIT, SEEK, PostgresSettings
from flightlab.engine.postgres.source import PostgresSource
from flightlab.engine.postgres.streams import QueryStream
from flightlab.engine.postgres.types import (
    cast_batch,
    checked_dimensions,
    entity_type,
    feature_type,
)
from flightlab.engine.postgres.views import PgView, checked, key_texts_collide, resolve
from flightlab.engine.results import FLIGHTLAB, ResultStream
from flightlab.engine.usage import UsageCounters
from flightlab.errors import MalformedEntityDataError

logger = logging.getLogger("flightlab.engine.postgres")


@dataclass(frozen=True)
class PostgresUsage:
    """``plans``: requests answered by each plan (and pulls); ``rows_fetched``
    and ``bytes_fetched``: what the engine read from PostgreSQL; ``last``: the
    latest request's plan choice; ``pools``: each pool's open and idle connections."""

    plans: dict[str, int]
    rows_fetched: int
    bytes_fetched: int
    last: PlanChoice | None
    pools: list[dict[str, int]] = field(default_factory=list)


class PostgresEngine:
    def __init__(
        self, settings: PostgresSettings, databases: RequestDatabases, usage: UsageCounters
    ):
        self.settings = settings
        self._databases = databases
        self._usage = usage
        self.pools = Databases(settings)
        self._lock = threading.Lock()
        self._plans: dict[str, int] = {}
        self._rows = self._bytes = 0
        self._last: PlanChoice | None = None

    # --- which sources ---------------------------------------------------------------

    def reader(self, data_source: Any, config: Any) -> PostgresSource | None:
        from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
            PostgreSQLSource,
        )

        if type(data_source) is not PostgreSQLSource or not driver_available():
            return None
        return PostgresSource(data_source, self.pools.pool(config.offline_store))

    @staticmethod
    def answers(readers: list[Any]) -> bool:
        return bool(readers) and all(isinstance(r, PostgresSource) for r in readers)

    # --- get_historical_features, entity rows as a table -------------------------------

    def historical(
        self,
        config: Any,
        feature_views: list[Any],
        readers: list[PostgresSource],
        feature_refs: list[str],
        on_demand_views: list[Any],
        entity_rows: pa.Table,
        full_feature_names: bool,
    ) -> ResultStream | None:
        timestamp = event_timestamp_column(entity_rows.schema)
        if not _entity_rows_answerable(entity_rows, timestamp, config):
            return None
        entity_rows, _ = prepared_entity_rows(entity_rows)
        session = readers[0].pool.lease()
        owner: Any = session  # who gives the session back: this function, then the stream
        try:
            views = self._views(session, config, feature_views, readers, feature_refs,
                                full_feature_names)  # fmt: skip
            if views is None:
                return None
            _check_join_keys(entity_rows, views)  # before anything reads the key columns
            if key_texts_collide(entity_rows, views, timestamp):
                return None
            choice = choose(session, views, entity_rows, timestamp, self.settings)
            self._chose(choice, entity_rows.num_rows, len(views))
            schema = _answer_schema(entity_rows.schema, views, session)
            if choice.plan == PIT or pc.count(entity_rows.column(timestamp)).as_py() == 0:
                owner = None  # no entity timestamps: no window to fetch
                result = self._pit(session, views, entity_rows, timestamp, schema)
            else:
                result = self._fetch(session, views, entity_rows, timestamp, schema, choice.plan)
                if result is None:
                    logger.info("Feast's postgres store answers: an array of several dimensions")
                    return None
        except BaseException:
            if owner is not None:
                session.broken()
            raise
        finally:
            if owner is not None:
                session.release()
        return _with_on_demand(result, on_demand_views, feature_refs, full_feature_names)

    def _views(
        self, session: Session, config: Any, feature_views: list[Any],
        readers: list[PostgresSource], feature_refs: list[str], full_feature_names: bool,
    ) -> list[PgView] | None:  # fmt: skip
        views = []
        for view, reader in zip(feature_views, readers, strict=True):
            resolved = checked(
                resolve(view, reader, feature_refs, full_feature_names), session,
                config.offline_store,
            )  # fmt: skip
            if isinstance(resolved, str):
                logger.info("Feast's postgres store answers: view %r: %s", view.name, resolved)
                return None
            views.append(resolved)
        return views

    def _pit(
        self, session: Session, views: list[PgView], entity_rows: pa.Table, timestamp: str,
        schema: pa.Schema,
    ) -> ResultStream:  # fmt: skip
        try:
            keys = list(dict.fromkeys(k for view in views for k in view.entity_columns))
            table = pit.upload_entity_rows(session, entity_rows, keys, timestamp)
            types = [view.source.types(session) for view in views]
            query = pit.pit_sql(table, [pit.ROW_ID], timestamp, views, types)
        except BaseException:
            session.broken()
            session.release()
            raise
        stream = QueryStream(session, query, on_batch=self._fetched)
        checked_batches = checked_dimensions(stream, pit.guard_names(views))
        batches = pit.stitched(checked_batches, entity_rows, schema, self._usage_read)
        return _started(ResultStream(schema, batches, FLIGHTLAB, close=stream.close))

    def _fetch(
        self, session: Session, views: list[PgView], entity_rows: pa.Table, timestamp: str,
        schema: pa.Schema, plan: str,
    ) -> ResultStream | None:  # fmt: skip
        bounds = pc.min_max(entity_rows.column(timestamp))
        times = (bounds["min"].as_py(), bounds["max"].as_py())
        database, close = self._databases.open()
        try:
            with self._databases.memory_errors_named():  # a window over the memory limit
                queries = fetch.fetched_views(
                    session, database, views, entity_rows, times, plan == SEEK, self._fetched
                )
            if queries is None:
                close()
                return None
            database.register(sql.ENTITY_TABLE, entity_rows)
            query = sql.historical_sql(entity_rows.column_names, timestamp, queries)
            _, batches = self._databases.read(database, query)
        except BaseException:
            close()
            raise
        width = entity_rows.num_columns
        cast = (cast_batch(batch, schema, width) for batch in batches)
        ties = any(q.every_tie for q in queries)
        total = None if ties else entity_rows.num_rows
        return ResultStream(schema, cast, FLIGHTLAB, total_rows=total, close=close)

    # --- get_historical_features, entity rows as SQL -----------------------------------

    def historical_sql(
        self,
        config: Any,
        feature_views: list[Any],
        readers: list[PostgresSource],
        feature_refs: list[str],
        on_demand_views: list[Any],
        entity_sql: str,
        full_feature_names: bool,
    ) -> ResultStream | None:
        session = readers[0].pool.lease()
        try:
            described = entity_sql_rows.entity_schema(session, entity_sql)
            timestamp = entity_sql_rows.event_timestamp(described)
            fields = entity_sql_rows.entity_fields(described)
            views = self._views(session, config, feature_views, readers, feature_refs,
                                full_feature_names)  # fmt: skip
            if timestamp is None or fields is None or views is None:
                session.release()
                return None
            if any(c not in described.names for view in views for c in view.entity_columns):
                session.release()
                return None  # the store raises its own error for a missing join key
            table = entity_sql_rows.create_entity_table(session, entity_sql)
            if entity_sql_rows.keys_collide(session, table, views, timestamp):
                session.release()
                return None
            choice = PlanChoice(PIT, "entity rows from SQL", {}, (), 0.0)
            self._chose(choice, -1, len(views))
            query = entity_sql_rows.pit_sql(table, described, timestamp, views, session)
            schema = _answer_schema(pa.schema(fields), views, session, uploaded=False)
        except BaseException:
            session.broken()
            session.release()
            raise
        stream = QueryStream(session, query, on_batch=self._fetched)
        checked_batches = checked_dimensions(stream, pit.guard_names(views))
        batches = _counted((cast_batch(b, schema) for b in checked_batches), self._usage_read)
        result = _started(ResultStream(schema, batches, FLIGHTLAB, close=stream.close))
        return _with_on_demand(result, on_demand_views, feature_refs, full_feature_names)

    # --- pull_latest / pull_all --------------------------------------------------------

    def pull(
        self,
        config: Any,
        reader: PostgresSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: datetime | None,
        end_date: datetime | None,
        latest: bool,
    ) -> ResultStream | None:
        columns = [*join_key_columns, *feature_name_columns, timestamp_field]
        columns += [created_timestamp_column] if created_timestamp_column else []
        dummy = latest and not join_key_columns
        session = reader.pool.lease()
        try:
            schema = pulls.answer_schema(
                session, reader, columns, dummy, where(config.offline_store)
            )
            many, guarded = reader.arrays(session, feature_name_columns)
            query = pulls.pull_sql(
                reader, join_key_columns, feature_name_columns, timestamp_field,
                created_timestamp_column, start_date, end_date, latest, guarded,
            )  # fmt: skip
        except BaseException:
            session.broken()
            session.release()
            raise
        if schema is None or many or query is None:
            session.release()
            return None
        self.counted_plan("pull")
        stream = QueryStream(session, query, on_batch=self._fetched)
        checked = checked_dimensions(stream, [f"{reader.description}"] if guarded else [])
        batches = _counted((cast_batch(b, schema) for b in checked), self._usage_read)
        return _started(ResultStream(schema, batches, FLIGHTLAB, close=stream.close))

    # --- counts ------------------------------------------------------------------------

    def _chose(self, choice: PlanChoice, rows: int, views: int) -> None:
        with self._lock:
            self._plans[choice.plan] = self._plans.get(choice.plan, 0) + 1
            self._last = choice
        logger.info(
            "postgres retrieval: %s entity_rows=%d views=%d planned_in=%.3fs %s",
            choice.describe(), rows, views, choice.seconds, list(choice.views) or "",
        )  # fmt: skip

    def counted_plan(self, plan: str) -> None:
        with self._lock:
            self._plans[plan] = self._plans.get(plan, 0) + 1

    def _fetched(self, batch: pa.RecordBatch) -> None:
        with self._lock:
            self._rows += batch.num_rows
            self._bytes += batch.nbytes

    def _usage_read(self, rows: int) -> None:
        self._usage.read(rows)

    def usage(self) -> PostgresUsage:
        with self._lock:
            return PostgresUsage(
                dict(self._plans), self._rows, self._bytes, self._last,
                [pool.stats() for pool in self.pools.pools()],
            )  # fmt: skip

    def close(self) -> None:
        self.pools.close()


def _entity_rows_answerable(entity_rows: pa.Table, timestamp: str, config: Any) -> bool:
    """Whether Feast's store takes these entity rows as the engine reads them."""
    event = entity_rows.schema.field(timestamp).type
    if not pa.types.is_timestamp(event):
        return False  # text: the store compares it with timestamps and fails
    if event.tz is None and not getattr(config, "coerce_tz_aware", True):
        return False  # naive: the store reads it in the database's time zone
    return all(entity_type(f.type) is not None for f in entity_rows.schema)


def _check_join_keys(entity_rows: pa.Table, views: list[PgView]) -> None:
    for view in views:
        for column in view.entity_columns:
            if column not in entity_rows.column_names:
                raise MalformedEntityDataError(
                    f"the entity data has no column {column!r}, which feature view "
                    f"{view.name!r} joins on; its columns are {entity_rows.column_names}"
                )


def _answer_schema(
    entity_schema: pa.Schema, views: list[PgView], session: Session, uploaded: bool = True
) -> pa.Schema:
    """The entity columns (``uploaded``: typed as Feast's store's upload types
    them; else already in their answer types), then each view's features."""
    fields = [pa.field(f.name, entity_type(f.type) if uploaded else f.type) for f in entity_schema]
    for view in views:
        types = view.source.types(session)
        fields += [pa.field(out, feature_type(types[src])) for src, out in view.features]
    return pa.schema(fields)


def _started(result: ResultStream) -> ResultStream:
    """``result`` with its first batch read: an error in the query (a
    statement timeout, a failing expression) is raised here, before the
    answer's head, not midway through its stream."""
    try:
        first = next(result.batches, None)
    except BaseException:
        result.close()
        raise
    if first is not None:
        result.batches = itertools.chain([first], result.batches)
    return result


def _counted(batches: Iterator[pa.RecordBatch], count: Any) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        count(batch.num_rows)
        yield batch


def _with_on_demand(
    result: ResultStream, on_demand_views: list[Any], feature_refs: list[str], full_names: bool
) -> ResultStream:
    if not on_demand_views:
        return result
    try:  # reads the first batch: a transformation may fail right here
        batches, schema = with_on_demand_features(
            result.batches, result.schema, on_demand_views, feature_refs, full_names
        )
    except BaseException:
        result.close()
        raise
    result.batches: Iterator[pa.RecordBatch] = batches
    result.schema = schema
    return result
