"""Maps a decoded request to a call of the server's Feast store.

This module knows Feast and nothing of the wire: it takes the frozen requests
of :mod:`flightlab.wire.protocol` and returns an Arrow table (for the APIs that
return data) or a small summary dict (for those that do not).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
from feast import FeatureStore, utils
from feast.data_source import DataSource
from feast.errors import (
    FeastError,
    FeastPermissionError,
    FeatureViewNotFoundException,
)
from feast.feature_logging import FeatureServiceLoggingSource
from feast.infra.offline_stores.offline_store import OfflineStore, RetrievalJob
from feast.infra.offline_stores.offline_utils import get_offline_store_from_config
from feast.permissions.action import AuthzedAction

from flightlab.dispatch import spark_results
from flightlab.dispatch.backends import StoreBackend
from flightlab.dispatch.checks import check_entity_query_supported, named_feature_errors
from flightlab.dispatch.exports import ExportLocation, export_retrieval
from flightlab.dispatch.feast_objects import data_source_from_bytes, entity_frame
from flightlab.dispatch.permissions import Permissions
from flightlab.dispatch.persisting import persist_destination, sources_besides_destination
from flightlab.dispatch.planning import HistoricalPlan, check_request_data, plan_historical
from flightlab.dispatch.reuse import ResultReuse
from flightlab.dispatch.selection import in_selected_order, with_selection_applied
from flightlab.dispatch.writes import ParquetWrites
from flightlab.engine.results import ResultStream, closing_both
from flightlab.engine.runner import Engine
from flightlab.engine.settings import EngineMode, EngineSettings
from flightlab.errors import MalformedParameterError
from flightlab.wire import protocol

logger = logging.getLogger(__name__)


class OfflineDispatcher:
    """Runs requests against one Feast ``FeatureStore`` and its offline store.

    With ``enforce_permissions`` (a server with ``oidc`` or ``kubernetes``
    auth), every resource a request touches is checked against the registry's
    Permission objects for the calling user, with Feast's own policy engine:
    READ_OFFLINE to retrieve, WRITE_OFFLINE to write.
    """

    def __init__(
        self,
        store: FeatureStore,
        enforce_permissions: bool = False,
        engine: Engine | None = None,
        exports: ExportLocation | None = None,
        reuse: ResultReuse | None = None,
    ):
        self.store = store
        self._exports = exports
        self.reuse = reuse or ResultReuse(0)
        self.enforce_permissions = enforce_permissions
        self._permissions = Permissions(store, enforce_permissions)
        self.engine = engine or Engine(EngineSettings(mode=EngineMode.FEAST))
        self.offline_store: OfflineStore = get_offline_store_from_config(store.config.offline_store)
        self._registry_lock = threading.Lock()
        # Feast's duckdb store runs every query on ibis's one process-wide
        # duckdb connection, which is not thread-safe: concurrent calls fail
        # with "Attempting to execute an unsuccessful or closed pending query
        # result". Such a store is called by one worker at a time; flightlab's
        # engine, with a database per request, needs no such lock.
        self._store_lock = threading.Lock() if _single_threaded(self.offline_store) else None
        # Spark's session per worker thread; database errors said plainly.
        self._backend = StoreBackend(store.config.offline_store)
        # Parquet files are written by flightlab itself, locked and atomically.
        self._parquet = ParquetWrites(self.offline_store, store.config.repo_path)
        self._handlers: dict[type[protocol.Request], Callable[[Any, Any], Any]] = {
            protocol.GetTableColumnNamesAndTypes: self._column_names_and_types,
            protocol.OfflineWriteBatch: self._offline_write_batch,
            protocol.WriteLoggedFeatures: self._write_logged_features,
            protocol.Persist: self._persist,
            protocol.ValidateDataSource: self._validate_data_source,
        }

    def run(self, request: protocol.Request, user: Any = None) -> ResultStream | dict[str, Any]:
        """Run ``request`` for ``user`` (a Feast ``User``; None without auth).

        A request that returns data gets a :class:`ResultStream`; the others a
        small summary dict.
        """
        with self._backend.call(), named_feature_errors():
            # Objects applied after the server started must be found: reload
            # the registry (a small read) before resolving any name.
            self._refresh_registry()
            if isinstance(request, protocol.RETRIEVAL_REQUESTS):
                return self._retrieve(request, user)
            if isinstance(request, protocol.ExportRetrieval):
                return self._export(request, user)
            # A request that reads holds off renames of the sources meanwhile
            # (a persist locks the ones it reads itself: not its destination).
            reads = self.store.list_data_sources() if request.returns_data else []
            with self._feast_store(), self._parquet.reading(reads):
                result = self._handlers[type(request)](request, user)
        return ResultStream.of_table(result) if isinstance(result, pa.Table) else result

    def _feast_store(self):
        return self._store_lock or nullcontext()

    # --- retrievals ----------------------------------------------------------

    def _retrieve(self, request: protocol.RetrievalRequest, user: Any) -> ResultStream:
        """flightlab's engine answers where it can; Feast's store elsewhere.

        Either way the sources' renames are held off until the result is read:
        to its last batch, for a result the engine streams.
        """
        if isinstance(request, protocol.GetHistoricalFeatures):
            plan = self._historical_plan(request, user)
            kept_as, request = request, with_selection_applied(request)
            answer_with_engine = lambda: self._engine_historical(request, plan)  # noqa: E731
            feast_job = lambda: self._historical_job(request, plan)  # noqa: E731
            sources = [view.batch_source for view in plan.feature_views]
            views = [*plan.feature_views, *plan.on_demand_views]
        else:
            source = self._permissions.readable_source(request, user)
            answer_with_engine = lambda: self._engine_pull(request, source)  # noqa: E731
            feast_job = lambda: self._pull_job(request, source)  # noqa: E731
            kept_as, sources, views = request, [source], []
        compute = lambda: self._computed(answer_with_engine, feast_job)  # noqa: E731
        compute = in_selected_order(compute, request)
        return self.reuse.answer(kept_as, views, sources, compute)

    def _computed(
        self,
        answer_with_engine: Callable[[], ResultStream | None],
        feast_job: Callable[[], RetrievalJob],
    ) -> ResultStream:
        with ExitStack() as reading:
            reading.enter_context(self._parquet.reading(self.store.list_data_sources()))
            stream = answer_with_engine()
            if stream is None:
                with self._feast_store():
                    return self._feast_answer(feast_job())
            # The engine's stream holds the sources until its last batch is read.
            stream.close = closing_both(stream.close, reading.pop_all().close)
            # A database error midway (a stream read from PostgreSQL) named as before it.
            stream.batches = self._backend.translated(stream.batches)
            return stream

    def _export(self, request: protocol.ExportRetrieval, user: Any) -> dict[str, Any]:
        # The same permission as reading the retrieval: _retrieve checks it.
        return export_retrieval(self._exports, lambda: self._retrieve(request.retrieval, user))

    def _feast_answer(self, job: RetrievalJob) -> ResultStream:
        """Feast's job's result: Spark's streamed from the parquet files Spark
        writes (never collected on its driver), any other store's held whole."""
        if spark_results.streamable(job):
            staged = spark_results.staged_result(job, self.engine.settings.spill_dir)
            return spark_results.result_stream(job, staged)
        return ResultStream.of_table(job.to_arrow())

    def _retrieval_job(
        self, request: protocol.RetrievalRequest, user: Any
    ) -> tuple[RetrievalJob, list[DataSource]]:
        """Feast's job for ``request`` (what ``persist`` saves), and the sources it reads."""
        if isinstance(request, protocol.GetHistoricalFeatures):
            plan = self._historical_plan(request, user)
            sources = [view.batch_source for view in plan.feature_views]
            return self._historical_job(request, plan), sources
        source = self._permissions.readable_source(request, user)
        return self._pull_job(request, source), [source]

    def _historical_plan(
        self, request: protocol.GetHistoricalFeatures, user: Any
    ) -> HistoricalPlan:
        if self.enforce_permissions and request.entity_df_sql is not None:
            # The store would run the client's SQL with the server's
            # credentials, past every feature-view permission.
            raise FeastPermissionError(
                "entity_df_sql is refused on a server with authentication: "
                "send the entity rows as a table"
            )
        plan = plan_historical(
            self.store, request.features, request.projections or (), request.full_feature_names
        )
        for view in plan.views_read:
            self._permissions.authorize(user, view, AuthzedAction.READ_OFFLINE)
        if request.entity_df is not None:
            check_request_data(plan, request.entity_df.column_names)
        return plan

    def _engine_historical(
        self, request: protocol.GetHistoricalFeatures, plan: HistoricalPlan
    ) -> ResultStream | None:
        if request.entity_df is None and request.entity_df_sql is None:  # by dates
            return self.engine.historical_by_dates(
                self.store.config,
                plan.feature_views,
                plan.feature_refs,
                plan.on_demand_views,
                plan.full_feature_names,
                request.start_date,
                request.end_date,
            )
        # A table, or SQL (which the engine runs where the sources are: PostgreSQL).
        entity_rows = request.entity_df if request.entity_df is not None else request.entity_df_sql
        return self.engine.historical(
            self.store.config,
            plan.feature_views,
            plan.feature_refs,
            plan.on_demand_views,
            entity_rows,
            plan.full_feature_names,
        )

    def _historical_job(
        self, request: protocol.GetHistoricalFeatures, plan: HistoricalPlan
    ) -> RetrievalJob:
        # What FeatureStore.get_historical_features does around the store call.
        check_entity_query_supported(self.offline_store, request)
        entity_df: pd.DataFrame | str | None = request.entity_df_sql
        if request.entity_df is not None:
            entity_df = entity_frame(request.entity_df)
            if self.store.config.coerce_tz_aware:
                entity_df = utils.make_df_tzaware(entity_df)
        dates: dict[str, datetime] = {}
        if request.start_date is not None:
            dates["start_date"] = request.start_date
        if request.end_date is not None or entity_df is None:
            # As Feast's stores default it (compute_non_entity_date_range).
            dates["end_date"] = request.end_date or datetime.now(UTC)
        return self.offline_store.get_historical_features(
            config=self.store.config,
            feature_views=plan.feature_views,
            feature_refs=plan.feature_refs,
            entity_df=entity_df,
            registry=self.store.registry,
            project=self.store.project,
            full_feature_names=plan.full_feature_names,
            **dates,
        )

    def _engine_pull(
        self, request: protocol.PullRequest, source: DataSource
    ) -> ResultStream | None:
        return self.engine.pull(
            self.store.config,
            source,
            list(request.join_key_columns),
            list(request.feature_name_columns),
            request.timestamp_field,
            request.created_timestamp_column,
            request.start_date,
            request.end_date,
            latest=isinstance(request, protocol.PullLatestFromTableOrQuery),
        )

    def _pull_job(self, request: protocol.PullRequest, source: DataSource) -> RetrievalJob:
        pull = (
            self.offline_store.pull_latest_from_table_or_query
            if isinstance(request, protocol.PullLatestFromTableOrQuery)
            else self.offline_store.pull_all_from_table_or_query
        )
        return pull(
            config=self.store.config,
            data_source=source,
            join_key_columns=list(request.join_key_columns),
            feature_name_columns=list(request.feature_name_columns),
            timestamp_field=request.timestamp_field,
            created_timestamp_column=request.created_timestamp_column,
            start_date=request.start_date,
            end_date=request.end_date,
        )

    def _column_names_and_types(
        self, request: protocol.GetTableColumnNamesAndTypes, user: Any
    ) -> pa.Table:
        source = data_source_from_bytes(request.data_source)
        self._permissions.authorize(user, source, AuthzedAction.READ_OFFLINE)
        pairs = list(source.get_table_column_names_and_types(self.store.config))
        return pa.table(
            {
                "name": pa.array([name for name, _ in pairs], pa.string()),
                "type": pa.array([str(kind) for _, kind in pairs], pa.string()),
            }
        )

    # --- writes ----------------------------------------------------------------

    def _offline_write_batch(
        self, request: protocol.OfflineWriteBatch, user: Any
    ) -> dict[str, Any]:
        feature_view = self._writable_feature_view(request.feature_view_name)
        self._permissions.authorize(user, feature_view, AuthzedAction.WRITE_OFFLINE)
        if self._parquet.handles_source(feature_view.batch_source):
            self._parquet.append(feature_view.batch_source, request.table)
        else:
            self.offline_store.offline_write_batch(
                self.store.config, feature_view, request.table, progress=None
            )
        self.reuse.drop_source(feature_view.batch_source)
        return {"rows_written": request.table.num_rows}

    def _writable_feature_view(self, name: str):
        try:
            return self.store.get_feature_view(name)
        except FeatureViewNotFoundException:
            # A stream feature view writes to its batch source the same way.
            try:
                return self.store.get_stream_feature_view(name)
            except FeastError:
                raise FeatureViewNotFoundException(name, self.store.project) from None

    def _write_logged_features(
        self, request: protocol.WriteLoggedFeatures, user: Any
    ) -> dict[str, Any]:
        service = self.store.get_feature_service(request.feature_service_name)
        self._permissions.authorize(user, service, AuthzedAction.WRITE_OFFLINE)
        if service.logging_config is None:
            raise MalformedParameterError(
                f"feature service {service.name!r} has no logging_config, "
                "so it has nowhere to write logged features"
            )
        if self._parquet.handles_logging(service.logging_config):
            self._parquet.write_logs(service.logging_config, request.data)
            return {"rows_written": request.data.num_rows}
        self.offline_store.write_logged_features(
            config=self.store.config,
            data=request.data,
            source=FeatureServiceLoggingSource(service, self.store.project),
            logging_config=service.logging_config,
            registry=self.store.registry,
        )
        return {"rows_written": request.data.num_rows}

    def _persist(self, request: protocol.Persist, user: Any) -> dict[str, Any]:
        destination, storage = persist_destination(self.store, request, self.enforce_permissions)
        self._permissions.authorize(user, destination, AuthzedAction.WRITE_OFFLINE)
        job, sources = self._retrieval_job(request.retrieval, user)
        # The job reads its sources as it persists: no rename may tear them.
        reads = sources_besides_destination(sources, storage, self.store.config.repo_path)
        with self._parquet.reading(reads):
            if self._parquet.handles_storage(storage):
                self._parquet.persist(job, storage, request.allow_overwrite)
            else:
                job.persist(storage, allow_overwrite=request.allow_overwrite)
        if isinstance(destination, DataSource):  # a source others read: kept results go
            self.reuse.drop_source(destination)
        return {"persisted_to": str(storage.to_proto()).strip()}

    def _validate_data_source(
        self, request: protocol.ValidateDataSource, user: Any
    ) -> dict[str, Any]:
        source = data_source_from_bytes(request.data_source)
        self._permissions.authorize(user, source, AuthzedAction.READ_OFFLINE)
        self.offline_store.validate_data_source(self.store.config, source)
        return {"validated": source.name}

    def _refresh_registry(self) -> None:
        with self._registry_lock:
            self.store.refresh_registry()


def _single_threaded(offline_store: OfflineStore) -> bool:
    """Whether ``offline_store`` must not be called from two threads at once."""
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStore

    return isinstance(offline_store, DuckDBOfflineStore)
