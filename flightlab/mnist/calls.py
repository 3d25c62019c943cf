"""The other offline-store APIs as the client notebook calls them: pulls,
validation, writes, persist and logged features.

Each takes a FeatureStore, local or remote: the same call runs in-process on
duckdb or, through flightlab.client.RemoteOfflineStore, on the server."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from flightlab.mnist.dataset import (
    FEATURE_SERVICE,
    JOIN_KEY,
    PREDICTIONS_VIEW,
    SOURCE,
    TIMESTAMP,
)
from flightlab.mnist.retrieval import as_table


def offline_store_of(store: Any) -> Any:
    """The OfflineStore a FeatureStore is configured with."""
    from feast.infra.offline_stores.offline_utils import get_offline_store_from_config

    return get_offline_store_from_config(store.config.offline_store)


def _pull(
    method: str,
    store: Any,
    start: datetime,
    end: datetime,
    source: str,
    features: Sequence[str],
) -> Any:
    data_source = store.get_data_source(source)
    return getattr(offline_store_of(store), method)(
        config=store.config,
        data_source=data_source,
        join_key_columns=[JOIN_KEY],
        feature_name_columns=list(features),
        timestamp_field=data_source.timestamp_field,
        created_timestamp_column=data_source.created_timestamp_column or None,
        start_date=start,
        end_date=end,
    )


def pull_latest(
    store: Any,
    start: datetime,
    end: datetime,
    source: str = SOURCE,
    features: Sequence[str] = ("label", "split"),
) -> Any:
    """``pull_latest_from_table_or_query``: each image's latest row in [start, end]."""
    return _pull("pull_latest_from_table_or_query", store, start, end, source, features)


def pull_all(
    store: Any,
    start: datetime,
    end: datetime,
    source: str = SOURCE,
    features: Sequence[str] = ("label", "split"),
) -> Any:
    """``pull_all_from_table_or_query``: every row in [start, end]."""
    return _pull("pull_all_from_table_or_query", store, start, end, source, features)


def validate_source(store: Any, source: str = SOURCE) -> str:
    """``validate_data_source``: check the offline store can read ``source``."""
    offline_store_of(store).validate_data_source(store.config, store.get_data_source(source))
    return source


def write_predictions(store: Any, predictions: pd.DataFrame) -> None:
    """``offline_write_batch``: append predictions to the ``mnist_predictions`` view."""
    store.write_to_offline_store(PREDICTIONS_VIEW, predictions)


def persist_retrieval(
    store: Any,
    job: Any,
    name: str,
    path: str | Path,
    allow_overwrite: bool = True,
    storage: Any = None,
) -> Any:
    """``persist``: save a retrieval's result as a Feast saved dataset at
    ``path`` (a parquet file, written by whoever runs the offline store), or
    in ``storage`` (see :func:`saved_storage`)."""
    from feast.infra.offline_stores.file_source import SavedDatasetFileStorage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "saving dataset is experimental"
        return store.create_saved_dataset(
            from_=job,
            name=name,
            storage=storage or SavedDatasetFileStorage(path=str(path)),
            allow_overwrite=allow_overwrite,
        )


def feature_log(
    store: Any, rows: pa.Table | pd.DataFrame, request_id: str = "demo", at: datetime | None = None
) -> pa.Table:
    """The log a feature server would write for serving ``rows`` (retrieved
    ``mnist`` features), in the logging schema of the ``mnist`` service."""
    from feast.feature_logging import (
        LOG_DATE_FIELD,
        LOG_TIMESTAMP_FIELD,
        REQUEST_ID_FIELD,
        FeatureServiceLoggingSource,
    )

    table = as_table(rows)
    service = store.get_feature_service(FEATURE_SERVICE)
    schema = FeatureServiceLoggingSource(service, store.project).get_schema(store.registry)
    n = table.num_rows
    stamp = pd.Timestamp(at if at is not None else datetime.now(UTC)).floor("us")
    served_at = table.column("event_timestamp").cast(TIMESTAMP)
    columns: dict[str, Any] = {}
    for f in schema:
        name = f.name
        if name == JOIN_KEY:
            columns[name] = table.column(JOIN_KEY)
        elif name == LOG_TIMESTAMP_FIELD:
            columns[name] = pa.array([stamp] * n, TIMESTAMP)
        elif name == LOG_DATE_FIELD:
            columns[name] = pa.array([stamp.date()] * n, pa.date32())
        elif name == REQUEST_ID_FIELD:
            columns[name] = pa.array([request_id] * n, pa.string())
        elif name.endswith("__timestamp"):
            columns[name] = served_at
        elif name.endswith("__status"):
            columns[name] = pa.array([1] * n, pa.int32())  # FieldStatus.PRESENT
        else:
            feature = name.split("__", 1)[1]
            columns[name] = table.column(feature)
    return pa.table({f.name: pa.chunked_array(columns[f.name]).cast(f.type) for f in schema})


def log_features(store: Any, rows: pa.Table | pd.DataFrame, request_id: str = "demo") -> pa.Table:
    """``write_logged_features``: log served ``rows`` to the ``mnist`` service's
    logging destination; returns the log rows written."""
    logs = feature_log(store, rows, request_id=request_id)
    store.write_logged_features(logs=logs, source=store.get_feature_service(FEATURE_SERVICE))
    return logs


# --- the store profiles (scripts/demo.sh --store) ---------------------------------

# The profiles whose offline store implements offline_write_batch and
# write_logged_features (Feast's PostgreSQL store has neither).
_WRITING_PROFILES = ("duckdb", "file")


def store_writes(profile: str) -> bool:
    """Whether the server repo's offline store (its demo profile) takes writes."""
    return profile in _WRITING_PROFILES


def no_writes_note(profile: str, api: str) -> str:
    return (
        f"skipped {api}: Feast's {profile} offline store does not implement it "
        "(the server answers NotImplementedError, as a local call does)"
    )


def saved_storage(profile: str, path: str | Path, table: str) -> Any:
    """Where ``persist`` writes in a profile: a parquet file, or a PostgreSQL table."""
    if profile == "postgres":
        from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
            SavedDatasetPostgreSQLStorage,
        )

        return SavedDatasetPostgreSQLStorage(table_ref=table)
    from feast.infra.offline_stores.file_source import SavedDatasetFileStorage

    return SavedDatasetFileStorage(path=str(path))


def read_saved(server_store: Any, storage: Any) -> pd.DataFrame:
    """The rows a persist wrote, read where they are (with the server repo's config)."""
    from feast.infra.offline_stores.file_source import SavedDatasetFileStorage

    if isinstance(storage, SavedDatasetFileStorage):
        return pd.read_parquet(storage.file_options.uri)
    import psycopg

    config = server_store.config.offline_store
    with (
        psycopg.connect(
            host=config.host,
            port=config.port,
            dbname=config.database,
            user=config.user,
            password=config.password,
            sslmode=config.sslmode,
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute(f'SELECT * FROM "{storage.postgres_options._table}"')
        return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])
