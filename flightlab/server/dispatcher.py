"""Maps a decoded request to a call of the server's Feast store.

This module knows Feast and nothing of the wire: it takes the frozen requests
of :mod:`flightlab.wire.protocol` and returns an Arrow table (for the APIs that
return data) or a small summary dict (for those that do not).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import pandas as pd
import pyarrow as pa
from feast import FeatureStore
from feast.data_source import DataSource
from feast.errors import (
    DataSourceObjectNotFoundException,
    FeastError,
    FeastPermissionError,
    FeatureViewNotFoundException,
)
from feast.feature_logging import FeatureServiceLoggingSource
from feast.infra.offline_stores.offline_store import OfflineStore, RetrievalJob
from feast.infra.offline_stores.offline_utils import get_offline_store_from_config
from feast.permissions.action import AuthzedAction
from feast.permissions.enforcer import enforce_policy
from feast.permissions.user import User
from feast.protos.feast.core.DataSource_pb2 import DataSource as DataSourceProto
from feast.protos.feast.core.SavedDataset_pb2 import (
    SavedDatasetStorage as SavedDatasetStorageProto,
)
from feast.saved_dataset import SavedDatasetStorage
from google.protobuf.message import DecodeError

from flightlab.server.guards import check_entity_query_supported, named_feature_errors
from flightlab.server.writes import ParquetWrites
from flightlab.wire import protocol as p
from flightlab.wire.errors import MalformedEntityDataError, MalformedParameterError

logger = logging.getLogger(__name__)


class OfflineDispatcher:
    """Runs requests against one Feast ``FeatureStore`` and its offline store.

    With ``enforce_permissions`` (a server with ``oidc`` or ``kubernetes``
    auth), every resource a request touches is checked against the registry's
    Permission objects for the calling user, with Feast's own policy engine:
    READ_OFFLINE to retrieve, WRITE_OFFLINE to write.
    """

    def __init__(self, store: FeatureStore, enforce_permissions: bool = False):
        self.store = store
        self.enforce_permissions = enforce_permissions
        self.offline_store: OfflineStore = get_offline_store_from_config(store.config.offline_store)
        self._registry_lock = threading.Lock()
        # Feast's duckdb store runs every query on ibis's one process-wide
        # duckdb connection, which is not thread-safe: concurrent calls fail
        # with "Attempting to execute an unsuccessful or closed pending query
        # result". Such a store is called by one worker at a time.
        self._store_lock = threading.Lock() if _single_threaded(self.offline_store) else None
        # Parquet files are written by flightlab itself, locked and atomically.
        self._parquet = ParquetWrites(self.offline_store, store.config.repo_path)
        self._handlers: dict[type[p.Request], Callable[[Any, Any], Any]] = {
            p.GetHistoricalFeatures: lambda r, u: self._retrieval_job(r, u).to_arrow(),
            p.PullLatestFromTableOrQuery: lambda r, u: self._retrieval_job(r, u).to_arrow(),
            p.PullAllFromTableOrQuery: lambda r, u: self._retrieval_job(r, u).to_arrow(),
            p.GetTableColumnNamesAndTypes: self._column_names_and_types,
            p.OfflineWriteBatch: self._offline_write_batch,
            p.WriteLoggedFeatures: self._write_logged_features,
            p.Persist: self._persist,
            p.ValidateDataSource: self._validate_data_source,
        }

    def run(self, request: p.Request, user: Any = None) -> pa.Table | dict[str, Any]:
        """Run ``request`` for ``user`` (a Feast ``User``; None without auth)."""
        # Objects applied after the server started must be found: reload the
        # registry (a small read) before resolving any name.
        self._refresh_registry()
        # A retrieval holds off renames of the sources while it reads (not a
        # write: a persist to a registered source would wait on itself).
        reads = self.store.list_data_sources() if request.returns_data else []
        with self._store_lock or nullcontext(), named_feature_errors():
            with self._parquet.reading(reads):
                return self._handlers[type(request)](request, user)

    # --- retrievals ----------------------------------------------------------

    def _historical_job(self, request: p.GetHistoricalFeatures, user: Any) -> RetrievalJob:
        if self.enforce_permissions:
            if request.entity_df_sql is not None:
                # The store would run the client's SQL with the server's
                # credentials, past every feature-view permission.
                raise FeastPermissionError(
                    "entity_df_sql is refused on a server with authentication: "
                    "send the entity rows as a table"
                )
            for view in self._views_read_by(request.features):
                self._authorize(user, view, AuthzedAction.READ_OFFLINE)
        check_entity_query_supported(self.offline_store, request)
        entity_df: pd.DataFrame | str | None = request.entity_df_sql
        if request.entity_df is not None:
            entity_df = _entity_frame(request.entity_df)
        return self.store.get_historical_features(
            entity_df=entity_df,
            features=list(request.features),
            full_feature_names=request.full_feature_names,
            start_date=request.start_date,
            end_date=request.end_date,
        )

    def _pull_job(self, request: p.PullRequest, user: Any) -> RetrievalJob:
        pull = (
            self.offline_store.pull_latest_from_table_or_query
            if isinstance(request, p.PullLatestFromTableOrQuery)
            else self.offline_store.pull_all_from_table_or_query
        )
        return pull(
            config=self.store.config,
            data_source=self._readable_source(request, user),
            join_key_columns=list(request.join_key_columns),
            feature_name_columns=list(request.feature_name_columns),
            timestamp_field=request.timestamp_field,
            created_timestamp_column=request.created_timestamp_column,
            start_date=request.start_date,
            end_date=request.end_date,
        )

    def _retrieval_job(self, request: p.RetrievalRequest, user: Any) -> RetrievalJob:
        if isinstance(request, p.GetHistoricalFeatures):
            return self._historical_job(request, user)
        return self._pull_job(request, user)

    def _column_names_and_types(
        self, request: p.GetTableColumnNamesAndTypes, user: Any
    ) -> pa.Table:
        source = _data_source_from_bytes(request.data_source)
        self._authorize(user, source, AuthzedAction.READ_OFFLINE)
        pairs = list(source.get_table_column_names_and_types(self.store.config))
        return pa.table(
            {
                "name": pa.array([name for name, _ in pairs], pa.string()),
                "type": pa.array([str(kind) for _, kind in pairs], pa.string()),
            }
        )

    # --- writes ----------------------------------------------------------------

    def _offline_write_batch(self, request: p.OfflineWriteBatch, user: Any) -> dict[str, Any]:
        feature_view = self._writable_feature_view(request.feature_view_name)
        self._authorize(user, feature_view, AuthzedAction.WRITE_OFFLINE)
        if self._parquet.handles_source(feature_view.batch_source):
            self._parquet.append(feature_view.batch_source, request.table)
        else:
            self.offline_store.offline_write_batch(
                self.store.config, feature_view, request.table, progress=None
            )
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

    def _write_logged_features(self, request: p.WriteLoggedFeatures, user: Any) -> dict[str, Any]:
        service = self.store.get_feature_service(request.feature_service_name)
        self._authorize(user, service, AuthzedAction.WRITE_OFFLINE)
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

    def _persist(self, request: p.Persist, user: Any) -> dict[str, Any]:
        destination, storage = self._persist_destination(request)
        self._authorize(user, destination, AuthzedAction.WRITE_OFFLINE)
        job = self._retrieval_job(request.retrieval, user)
        if self._parquet.handles_storage(storage):
            self._parquet.persist(job, storage, request.allow_overwrite)
        else:
            job.persist(storage, allow_overwrite=request.allow_overwrite)
        return {"persisted_to": str(storage.to_proto()).strip()}

    def _persist_destination(self, request: p.Persist) -> tuple[DataSource, SavedDatasetStorage]:
        if request.destination_name is not None:
            destination = self.store.get_data_source(request.destination_name)
            return destination, SavedDatasetStorage.from_data_source(destination)
        storage = _storage_from_bytes(request.storage)
        if not self.enforce_permissions:
            return storage.to_data_source(), storage
        # With permissions, a destination must be a registered data source, so
        # that the check is made against its real name and tags: a storage the
        # client makes up could name any file the server can write.
        registered = self._registered_source_for(storage)
        if registered is None:
            raise FeastPermissionError(
                "persist may only write to a registered data source on a server with "
                f"authentication; {str(storage.to_proto()).strip()!r} is not one"
            )
        return registered, storage

    def _registered_source_for(self, storage: SavedDatasetStorage) -> DataSource | None:
        wanted = storage.to_proto()
        return next(
            (s for s in self.store.list_data_sources() if _storage_proto(s) == wanted), None
        )

    def _validate_data_source(self, request: p.ValidateDataSource, user: Any) -> dict[str, Any]:
        source = _data_source_from_bytes(request.data_source)
        self._authorize(user, source, AuthzedAction.READ_OFFLINE)
        self.offline_store.validate_data_source(self.store.config, source)
        return {"validated": source.name}

    # --- permissions -------------------------------------------------------------

    def _authorize(self, user: Any, resource: Any, action: AuthzedAction) -> None:
        """Raise FeastPermissionError unless ``user`` may do ``action`` on ``resource``."""
        if not self.enforce_permissions:
            return
        enforce_policy(
            permissions=self.store.registry.list_permissions(project=self.store.project),
            user=user if user is not None else User("", []),
            resources=[resource],
            actions=[action],
        )

    def _readable_source(self, request: p.PullRequest, user: Any) -> DataSource:
        try:
            source = self.store.get_data_source(request.data_source_name)
        except DataSourceObjectNotFoundException as not_registered:
            if request.data_source is None:
                raise
            # Not in the registry by name (a saved dataset's storage, say):
            # use the source the client sent, if it exists.
            source = _data_source_from_bytes(request.data_source)
            resource = self._registered_object_for(source) if self.enforce_permissions else source
            self._authorize(user, resource, AuthzedAction.READ_OFFLINE)
            try:  # reading its schema proves it exists (Feast's validate only warns)
                source.get_table_column_names_and_types(self.store.config)
            except Exception:
                raise not_registered from None
            return source
        self._authorize(user, source, AuthzedAction.READ_OFFLINE)
        return source

    def _registered_object_for(self, source: DataSource) -> Any:
        """The registered data source or saved dataset that stores where
        ``source`` points: what permissions are checked against. A source the
        client makes up could point at any file the server can read."""
        wanted = _storage_proto(source)
        if wanted is not None:
            for candidate in self.store.list_data_sources():
                if _storage_proto(candidate) == wanted:
                    return candidate
            for dataset in self.store.list_saved_datasets():
                if dataset.storage.to_proto() == wanted:
                    return dataset
        raise FeastPermissionError(
            f"data source {source.name or '(unnamed)'} is neither registered nor the "
            "storage of a registered saved dataset: a server with authentication "
            "reads only those"
        )

    def _views_read_by(self, feature_refs: tuple[str, ...]) -> list[Any]:
        """The views a retrieval reads: those its references name and, for an
        on-demand view, the feature views it computes from."""
        views: dict[str, Any] = {}
        for view_name in dict.fromkeys(ref.split(":", 1)[0] for ref in feature_refs):
            view = self._view_by_name(view_name)
            views[view_name] = view
            for projection in getattr(view, "source_feature_view_projections", {}).values():
                if projection.name not in views:
                    views[projection.name] = self._view_by_name(projection.name)
        return list(views.values())

    def _view_by_name(self, name: str) -> Any:
        for getter in (
            self.store.get_feature_view,
            self.store.get_on_demand_feature_view,
            self.store.get_stream_feature_view,
        ):
            try:
                return getter(name)
            except FeastError:
                continue
        raise FeatureViewNotFoundException(name, self.store.project)

    def _refresh_registry(self) -> None:
        with self._registry_lock:
            self.store.refresh_registry()


def _single_threaded(offline_store: OfflineStore) -> bool:
    """Whether ``offline_store`` must not be called from two threads at once."""
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStore

    return isinstance(offline_store, DuckDBOfflineStore)


def _entity_frame(table: pa.Table) -> pd.DataFrame:
    """Entity rows as the DataFrame Feast expects.

    Timestamps are floored to microseconds: SQL-backed stores (duckdb) refuse
    finer ones, and no offline store keeps nanoseconds.
    """
    if table.num_columns == 0:
        raise MalformedEntityDataError("the entity data has no columns")
    columns = []
    for column in table.columns:
        if pa.types.is_timestamp(column.type) and column.type.unit == "ns":
            column = column.cast(pa.timestamp("us", tz=column.type.tz), safe=False)
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names).to_pandas()


def _data_source_from_bytes(raw: bytes) -> DataSource:
    proto = DataSourceProto()
    try:
        proto.ParseFromString(raw)
        return DataSource.from_proto(proto)
    except (DecodeError, ValueError, KeyError) as exc:
        raise MalformedParameterError(
            f"'data_source' is not a serialized Feast DataSource: {exc}"
        ) from None


def _storage_proto(source: DataSource) -> SavedDatasetStorageProto | None:
    """Where a data source stores its rows, comparable across sources."""
    try:
        return SavedDatasetStorage.from_data_source(source).to_proto()
    except (ValueError, AttributeError):
        return None  # a source kind that cannot be a saved-dataset storage


def _storage_from_bytes(raw: bytes) -> SavedDatasetStorage:
    proto = SavedDatasetStorageProto()
    try:
        proto.ParseFromString(raw)
        return SavedDatasetStorage.from_proto(proto)
    except (DecodeError, ValueError, KeyError, AttributeError) as exc:
        raise MalformedParameterError(
            f"'storage' is not a serialized Feast SavedDatasetStorage: {exc}"
        ) from None
