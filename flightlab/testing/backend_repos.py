"""The sample repo (:mod:`flightlab.testing.sample_repo`) on Feast's PostgreSQL and Spark stores.

Same entities, views, on-demand view and feature service, same rows; only the
sources and the store differ:

- ``create_postgres_repo``: the rows are PostgreSQL tables, the offline store is
  Feast's ``postgres`` store and the registry is Feast's SQL registry, all in
  one database (the proof of concept's set-up);
- ``create_spark_repo``: the rows are parquet folders read by ``SparkSource``,
  the offline store is Feast's ``spark`` store in local mode.

Each repo also registers a source to persist retrievals into.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flightlab.testing.postgres import PostgresServer, load_table
from flightlab.testing.processes import feast_apply
from flightlab.testing.sample_repo import (
    customer_stats_frame,
    definitions_with,
    driver_stats_frame,
)

PROJECT = "flightlab_sample"
PERSISTED = "persisted_rows"

_POSTGRES_SOURCES = """\
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
    PostgreSQLSource,
)

driver_stats_source = PostgreSQLSource(
    name="driver_stats_source",
    table="driver_stats",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)
customer_stats_source = PostgreSQLSource(
    name="customer_stats_source",
    table="customer_stats",
    timestamp_field="event_timestamp",
)
persisted_rows = PostgreSQLSource(
    name="persisted_rows", table="persisted_rows", timestamp_field="event_timestamp"
)
"""

_SPARK_SOURCES = """\
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

# Folders of parquet files: Spark appends offline writes as new files.
driver_stats_source = SparkSource(
    name="driver_stats_source",
    path=str(DATA / "driver_stats"),
    file_format="parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)
customer_stats_source = SparkSource(
    name="customer_stats_source",
    path=str(DATA / "customer_stats"),
    file_format="parquet",
    timestamp_field="event_timestamp",
)
persisted_rows = SparkSource(
    name="persisted_rows",
    path=str(DATA / "persisted_rows"),
    file_format="parquet",
    timestamp_field="event_timestamp",
)
"""

# Spark in one process on two cores; UTC so timestamps read back as written.
SPARK_STORE_YAML = """\
offline_store:
  type: spark
  spark_conf:
    spark.master: "local[2]"
    spark.ui.enabled: "false"
    spark.ui.showConsoleProgress: "false"
    spark.sql.session.timeZone: UTC
    spark.sql.shuffle.partitions: "2"
    spark.default.parallelism: "2"
    spark.driver.memory: 1g
    spark.sql.execution.arrow.pyspark.enabled: "true"
"""

_REPO_YAML = """\
project: {project}
provider: local
{registry}online_store:
  type: sqlite
  path: data/online.db
{offline_store}entity_key_serialization_version: 3
"""

FILE_REGISTRY_YAML = """\
registry:
  path: data/registry.db
  cache_ttl_seconds: 0
"""


def repo_yaml(registry: str, offline_store: str, project: str = PROJECT) -> str:
    return _REPO_YAML.format(project=project, registry=registry, offline_store=offline_store)


def _frames() -> dict[str, pa.Table]:
    return {
        "driver_stats": pa.Table.from_pandas(driver_stats_frame(), preserve_index=False),
        "customer_stats": pa.Table.from_pandas(customer_stats_frame(), preserve_index=False),
    }


def _write_repo(repo: Path, yaml: str, sources: str) -> Path:
    (repo / "data" / "logs").mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(yaml)
    (repo / "definitions.py").write_text(definitions_with(sources))
    return repo


def create_postgres_repo(
    path: str | Path,
    server: PostgresServer,
    apply: bool = True,
    sql_registry: bool = True,
    load: bool = True,
) -> Path:
    """The sample repo on ``server``: its tables, its offline store and (with
    ``sql_registry``, else a registry file in the repo) its SQL registry.
    ``load=False`` leaves the tables as they are (another repo loaded them)."""
    if load:
        for name, table in _frames().items():
            load_table(server, name, table)
    registry = server.registry_yaml() if sql_registry else FILE_REGISTRY_YAML
    yaml = repo_yaml(registry, server.offline_store_yaml())
    repo = _write_repo(Path(path), yaml, _POSTGRES_SOURCES)
    if apply:
        feast_apply(repo)
    return repo


def spark_store_yaml(
    staging_location: str | Path | None = None, spark_conf: dict[str, str] | None = None
) -> str:
    """The spark store's yaml block: ``SPARK_STORE_YAML``, with a staging
    location and ``spark_conf`` entries set over its own."""
    lines = SPARK_STORE_YAML.splitlines()
    for key, value in (spark_conf or {}).items():
        lines = [line for line in lines if not line.strip().startswith(f"{key}:")]
        lines.append(f'    {key}: "{value}"')
    if staging_location is not None:
        lines.append(f"  staging_location: {staging_location}")
    return "\n".join(lines) + "\n"


def create_spark_repo(
    path: str | Path,
    apply: bool = True,
    staging_location: str | Path | None = None,
    spark_conf: dict[str, str] | None = None,
) -> Path:
    """The sample repo over parquet folders, on Feast's spark store (local mode),
    with a ``staging_location`` and ``spark_conf`` entries if given."""
    store_yaml = spark_store_yaml(staging_location, spark_conf)
    repo = _write_repo(Path(path), repo_yaml(FILE_REGISTRY_YAML, store_yaml), _SPARK_SOURCES)
    for name, table in _frames().items():
        folder = repo / "data" / name
        folder.mkdir(parents=True, exist_ok=True)
        # Spark reads no nanosecond timestamps.
        pq.write_table(table, folder / "part-0.parquet", coerce_timestamps="us")
    if apply:
        feast_apply(repo)
    return repo


def client_yaml(
    registry: str, port: int, offline_type: str = "flightlab.client.RemoteOfflineStore"
) -> str:
    """A client repo's yaml: ``registry`` (a yaml block), the server on 127.0.0.1:``port``.

    ``offline_type`` is flightlab's client or Feast's stock ``remote``.
    """
    offline = f"offline_store:\n  type: {offline_type}\n  host: 127.0.0.1\n  port: {port}\n"
    return repo_yaml(registry, offline)
