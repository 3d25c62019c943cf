"""``RemoteOfflineStore``: a Feast offline store that runs on a flightlab server.

Select it in a client repo's ``feature_store.yaml``::

    offline_store:
      type: flightlab.client.RemoteOfflineStore
      host: localhost
      port: 8815

Every call becomes a request of :mod:`flightlab.wire.protocol`; retrievals are lazy
and nothing is sent until ``to_df``/``to_arrow``/``persist``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Optional, Union

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast.data_source import DataSource
from feast.feature_logging import FeatureServiceLoggingSource, LoggingConfig, LoggingSource
from feast.feature_view import FeatureView
from feast.infra.offline_stores.offline_store import (
    OfflineStore,
    RetrievalJob,
    RetrievalMetadata,
)
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from feast.saved_dataset import SavedDatasetStorage
from pydantic import Field, StrictBool, StrictInt, StrictStr

from flightlab.client.connections import connection
from flightlab.client.entities import entity_rows_reader, entity_schema_of
from flightlab.client.parquet_parts import DEFAULT_MAX_FILE_BYTES, write_parquet_parts
from flightlab.client.requests import aliased_projections, pull_request, retrieval_metadata
from flightlab.client.retries import RetryPolicy
from flightlab.client.shards import Shard
from flightlab.client.transport import OfflineFlightClient, ProgressCallback
from flightlab.wire import protocol, version
from flightlab.wire.selection import RowSelection


class RemoteOfflineStoreConfig(FeastConfigBaseModel):
    """Where the flightlab server is, how to reach it, how long a call may take."""

    type: Literal["flightlab.client.RemoteOfflineStore"] = "flightlab.client.RemoteOfflineStore"
    host: StrictStr = "localhost"
    port: StrictInt = 8815
    scheme: Literal["http", "https"] = "http"
    """https: connect over TLS (as Feast's remote offline store names it)."""
    cert: StrictStr = ""
    """PEM file of the CA that signed the server's certificate (TLS); empty: system CAs."""
    client_cert: StrictStr = ""
    """mTLS: PEM file of this client's certificate chain."""
    client_key: StrictStr = ""
    """mTLS: PEM file of this client's private key."""
    timeout: Optional[float] = None
    """Seconds a call may take; None waits as long as the server needs."""
    compression: Optional[Literal["zstd", "lz4"]] = None
    """Compress data on the wire both ways (worth it on slow networks only)."""
    retries: StrictInt = Field(default=3, ge=0)
    """Reads (never writes) are tried this many more times when the server
    cannot be reached or is busy, after a pause that doubles each time."""
    retry_backoff: float = Field(default=0.25, ge=0)
    """Seconds before the first retry."""
    reuse: StrictBool = True
    """False: every retrieval is computed afresh, never answered from (or kept
    in) the server's recent results."""
    partitions: StrictInt = Field(default=1, ge=1)
    """Above 1: a large retrieval comes in up to this many partitions, fetched
    concurrently (the server decides how many, by its entity rows)."""

    @property
    def location(self) -> str:
        transport = "grpc+tls" if self.scheme == "https" else "grpc+tcp"
        return f"{transport}://{self.host}:{self.port}"


def _client(config: RepoConfig) -> OfflineFlightClient:
    assert isinstance(config.offline_store, RemoteOfflineStoreConfig)
    return connection(config)


def _retries(config: RepoConfig) -> RetryPolicy:
    store_config = config.offline_store
    return RetryPolicy(store_config.retries, store_config.retry_backoff)


class RemoteRetrievalJob(RetrievalJob):
    """A retrieval to run on the server, lazily: nothing is sent until asked."""

    def __init__(
        self,
        config: RepoConfig,
        request: protocol.RetrievalRequest,
        metadata: RetrievalMetadata | None = None,
        entity_frame: pd.DataFrame | None = None,
    ):
        self._config = config
        self.request = request
        self._metadata = metadata
        self._entity_frame = entity_frame

    def _request(self) -> protocol.RetrievalRequest:
        """The request to send: with the entity DataFrame converted to Arrow
        slice by slice as it is uploaded, so no second full copy of it is held
        (``self.request`` carries only its schema)."""
        request = self.request
        if not self._config.offline_store.reuse and request.reuse is None:
            request = dataclasses.replace(request, reuse=False)
        if self._entity_frame is None:
            return request
        rows = entity_rows_reader(self._entity_frame, request.entity_df.schema)
        return dataclasses.replace(request, entity_df=rows)

    def with_selection(self, selection: RowSelection) -> RemoteRetrievalJob:
        """This retrieval for the entity rows ``selection`` picks, in the order
        it asks (see :mod:`flightlab.client.training`)."""
        request = dataclasses.replace(self.request, selection=selection.to_json())
        return RemoteRetrievalJob(self._config, request, self._metadata, self._entity_frame)

    def without_reuse(self) -> RemoteRetrievalJob:
        """This retrieval, computed afresh: the server's kept results are
        neither read nor filled."""
        request = dataclasses.replace(self.request, reuse=False)
        return RemoteRetrievalJob(self._config, request, self._metadata, self._entity_frame)

    def _to_arrow_internal(self, timeout: Optional[int] = None) -> pa.Table:
        client = _client(self._config)
        return _retries(self._config).run(
            lambda: client.fetch(self._request(), timeout=timeout), self.request.api
        )

    def _to_df_internal(self, timeout: Optional[int] = None) -> pd.DataFrame:
        return self._to_arrow_internal(timeout).to_pandas()

    def to_arrow_batches(
        self, timeout: Optional[float] = None, progress: ProgressCallback | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The result's record batches as they arrive, calling ``progress``
        after each. Stopping early cancels the server's stream."""
        client = _client(self._config)
        yield from _retries(self._config).batches(
            lambda: client.iter_batches(self._request(), timeout=timeout, progress=progress),
            self.request.api,
        )

    def to_parquet(
        self,
        folder: str | Path,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        progress: ProgressCallback | None = None,
        timeout: Optional[float] = None,
    ) -> list[Path]:
        """The result written to ``folder`` as it streams in, in parquet files
        of about ``max_file_bytes`` of Arrow data each (see
        :mod:`flightlab.client.parquet_parts`); the files, in row order."""
        with contextlib.closing(self.to_arrow_batches(timeout, progress)) as batches:
            return write_parquet_parts(batches, folder, max_file_bytes)

    def to_arrow_with_progress(
        self, progress: ProgressCallback, timeout: Optional[float] = None
    ) -> pa.Table:
        """Like ``to_arrow``, calling ``progress`` as batches arrive."""
        client = _client(self._config)
        return _retries(self._config).run(
            lambda: client.fetch(self._request(), timeout=timeout, progress=progress),
            self.request.api,
        )

    def supports_remote_storage_export(self) -> bool:
        """True where the server was given an export location."""
        return _client(self._config).server_offers("export")

    def to_remote_storage(self) -> list[str]:
        """Run the retrieval on the server, which writes the result as parquet
        files under its export location as it streams; their URIs, in row
        order (local paths, or ``s3://`` URIs). Not retried: a lost answer
        may have left files behind."""
        request = protocol.ExportRetrieval(retrieval=self._request())
        return _client(self._config).run_action(request)["files"]

    def served_shards(self) -> list[Shard]:
        """Stage this retrieval (its selection sharded) and return a handle on
        each endpoint the server serves it in (see :mod:`flightlab.client.shards`)."""
        client = _client(self._config)
        version.require_server(client.check_protocol(), version.SHARDS_PROTOCOL, "sharding")
        # The shards' own secret: a worker given one can read nothing else of this client's.
        owner = secrets.token_urlsafe(24).encode()
        endpoints = _retries(self._config).run(
            lambda: client.endpoints(self._request(), owner=owner), self.request.api
        )
        return [
            Shard(i, len(endpoints), self._config, endpoint.ticket.ticket,
                  tuple(location.uri.decode() for location in endpoint.locations), owner)
            for i, endpoint in enumerate(endpoints)
        ]  # fmt: skip

    @property
    def full_feature_names(self) -> bool:
        return getattr(self.request, "full_feature_names", False)

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        # The server runs the retrieval through its FeatureStore, which applies
        # on-demand transformations: the rows arrive with them computed.
        return []

    @property
    def metadata(self) -> Optional[RetrievalMetadata]:
        return self._metadata

    def persist(
        self,
        storage: SavedDatasetStorage,
        allow_overwrite: bool = False,
        timeout: Optional[int] = None,
    ) -> None:
        request = protocol.Persist(
            retrieval=self._request(),
            storage=storage.to_proto().SerializeToString(),
            allow_overwrite=allow_overwrite,
        )
        _client(self._config).run_action(request, timeout=timeout)  # a write: never retried


class RemoteOfflineStore(OfflineStore):
    """Feast's OfflineStore interface, answered by a flightlab server."""

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: Optional[Union[pd.DataFrame, str]],
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        **kwargs: Any,
    ) -> RemoteRetrievalJob:
        entity_table = entity_sql = frame = None
        if isinstance(entity_df, str):
            entity_sql = entity_df
        elif entity_df is not None:
            frame = entity_df
            entity_table = entity_schema_of(entity_df).empty_table()
        request = protocol.GetHistoricalFeatures(
            features=tuple(feature_refs),
            entity_df=entity_table,
            entity_df_sql=entity_sql,
            full_feature_names=full_feature_names,
            start_date=kwargs.get("start_date"),
            end_date=kwargs.get("end_date"),
            projections=aliased_projections(feature_views),
        )
        metadata = retrieval_metadata(feature_refs, entity_df)
        return RemoteRetrievalJob(config, request, metadata, entity_frame=frame)

    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: Optional[str],
        start_date: datetime,
        end_date: datetime,
    ) -> RemoteRetrievalJob:
        request = pull_request(
            protocol.PullLatestFromTableOrQuery,
            data_source,
            join_key_columns,
            feature_name_columns,
            timestamp_field,
            created_timestamp_column,
            start_date,
            end_date,
        )
        return RemoteRetrievalJob(config, request)

    @staticmethod
    def pull_all_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: Optional[str] = None,
        start_date: Optional[datetime] = None,
        end_date: Optional[datetime] = None,
    ) -> RemoteRetrievalJob:
        request = pull_request(
            protocol.PullAllFromTableOrQuery,
            data_source,
            join_key_columns,
            feature_name_columns,
            timestamp_field,
            created_timestamp_column,
            start_date,
            end_date,
        )
        return RemoteRetrievalJob(config, request)

    @staticmethod
    def offline_write_batch(
        config: RepoConfig,
        feature_view: FeatureView,
        table: pa.Table,
        progress: Optional[Callable[[int], Any]],
    ) -> None:
        request = protocol.OfflineWriteBatch(feature_view_name=feature_view.name, table=table)
        _client(config).run_action(request)  # a write: never retried
        if progress:
            progress(table.num_rows)

    @staticmethod
    def write_logged_features(
        config: RepoConfig,
        data: Union[pa.Table, Path],
        source: LoggingSource,
        logging_config: LoggingConfig,
        registry: BaseRegistry,
    ) -> None:
        if not isinstance(source, FeatureServiceLoggingSource):
            raise TypeError("flightlab writes logs of feature services only")
        if isinstance(data, Path):
            data = pq.read_table(data)
        request = protocol.WriteLoggedFeatures(
            feature_service_name=source._feature_service.name, data=data
        )
        _client(config).run_action(request)  # a write: never retried

    def validate_data_source(self, config: RepoConfig, data_source: DataSource) -> None:
        request = protocol.ValidateDataSource(
            data_source=data_source.to_proto().SerializeToString()
        )
        client = _client(config)
        _retries(config).run(lambda: client.run_action(request), request.api)

    def get_table_column_names_and_types_from_data_source(
        self, config: RepoConfig, data_source: DataSource
    ) -> Iterable[tuple[str, str]]:
        request = protocol.GetTableColumnNamesAndTypes(
            data_source=data_source.to_proto().SerializeToString()
        )
        client = _client(config)
        table = _retries(config).run(lambda: client.fetch(request), request.api)
        return list(
            zip(table.column("name").to_pylist(), table.column("type").to_pylist(), strict=True)
        )
