"""The MNIST demo's ``postgres`` profile: the same feature repo, its rows in PostgreSQL.

The proof of concept's backend. The feature views, entity and service are the
committed repo's (the template the caller names: ``notebooks/mnist_demo/feature_repo``
in a checkout); only the two sources differ: PostgreSQL tables ``mnist`` (the
28 pixel rows as ``real[]`` columns, Feast's ``Array(Float32)``) and
``mnist_predictions``, read by Feast's ``postgres`` offline store. The registry
stays a file in the repo, so a client repo reads it as in the duckdb profile.
"""

from __future__ import annotations

from pathlib import Path

from flightlab.mnist.dataset import (
    LOGS_DIR,
    PREDICTIONS_SCHEMA,
    PREDICTIONS_SOURCE,
    PROJECT,
    SAVED_DIR,
    SOURCE,
    MnistData,
    feature_table,
)
from flightlab.testing.postgres import PostgresServer, load_table

TABLE = "mnist"
PREDICTIONS_TABLE = "mnist_predictions"
DEFINITIONS_FILE = "mnist_features.py"

_FILE_SOURCES = (
    f'''mnist_source = FileSource(
    name="{SOURCE}",
    path=str(DATA / "mnist.parquet"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)''',
    f'''predictions_source = FileSource(
    name="{PREDICTIONS_SOURCE}",
    path=str(DATA / "predictions.parquet"),
    timestamp_field="event_timestamp",
)''',
)

_POSTGRES_SOURCES = (
    f'''mnist_source = PostgreSQLSource(
    name="{SOURCE}",
    table="{TABLE}",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)''',
    f'''predictions_source = PostgreSQLSource(
    name="{PREDICTIONS_SOURCE}",
    table="{PREDICTIONS_TABLE}",
    timestamp_field="event_timestamp",
)''',
)

_IMPORT = (
    "from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (\n"
    "    PostgreSQLSource,\n"
    ")\n"
)


def postgres_definitions(template: str | Path) -> str:
    """The ``template`` repo's definitions, on PostgreSQL tables instead of parquet files."""
    text = (Path(template) / DEFINITIONS_FILE).read_text()
    for file_source, pg_source in zip(_FILE_SOURCES, _POSTGRES_SOURCES, strict=True):
        if file_source not in text:
            raise RuntimeError(f"{DEFINITIONS_FILE} changed: update flightlab.mnist.postgres_repo")
        text = text.replace(file_source, pg_source)
    anchor = "from feast.types import"
    return text.replace(anchor, _IMPORT + anchor, 1)


def postgres_repo_yaml(server: PostgresServer) -> str:
    return (
        "# The MNIST demo's postgres profile (written by flightlab.mnist.postgres_repo).\n"
        f"project: {PROJECT}\n"
        "provider: local\n"
        "registry:\n"
        "  path: data/registry.db\n"
        "  cache_ttl_seconds: 0\n"
        "online_store:\n"
        "  type: sqlite\n"
        "  path: data/online.db\n"
        f"{server.offline_store_yaml()}"
        "entity_key_serialization_version: 3\n"
    )


def create_postgres_feature_repo(
    repo: str | Path, server: PostgresServer, template: str | Path, data: MnistData
) -> Path:
    """Write the profile's repo at ``repo`` (the ``template``'s definitions) and
    load ``data`` into ``server``'s tables.

    ``feast apply`` is left to the caller (notebook 2 runs it).
    """
    repo = Path(repo)
    for folder in (LOGS_DIR, SAVED_DIR):
        (repo / "data" / folder).mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(postgres_repo_yaml(server))
    (repo / DEFINITIONS_FILE).write_text(postgres_definitions(template))
    load_table(server, TABLE, feature_table(data))
    load_table(server, PREDICTIONS_TABLE, PREDICTIONS_SCHEMA.empty_table())
    return repo
