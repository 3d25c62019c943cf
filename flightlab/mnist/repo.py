"""The MNIST demo's Feast feature repo: its files, its source data,
``feast apply``, and a client repo that reads it through a flightlab server."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flightlab.mnist.dataset import (
    LOGS_DIR,
    PREDICTIONS_FILE,
    PREDICTIONS_SCHEMA,
    PROJECT,
    SAVED_DIR,
    SOURCE_FILE,
    MnistData,
    feature_table,
)
from flightlab.testing.processes import feast_apply

# The demo's repo files are committed in its template repo (feature_store.yaml
# and the definitions, which name the objects above; a flightlab checkout has it
# at notebooks/mnist_demo/feature_repo); other repos are copies.
REPO_FILES = ("feature_store.yaml", "mnist_features.py")


def write_feature_repo(repo: str | Path, template: str | Path) -> Path:
    """Put the demo's ``feature_store.yaml`` and definitions file, from the
    ``template`` repo, into ``repo``."""
    repo, template = Path(repo), Path(template)
    repo.mkdir(parents=True, exist_ok=True)
    for name in REPO_FILES:
        if (repo / name).resolve() != (template / name).resolve():
            shutil.copyfile(template / name, repo / name)
    return repo


def data_dir(repo: str | Path) -> Path:
    return Path(repo) / "data"


def write_source_data(repo: str | Path, table: pa.Table) -> Path:
    """Write the feature view sources under ``repo/data``; returns the mnist parquet.

    The predictions source is (re)created empty. Row groups of 8,192 rows let
    duckdb read the file on every core.
    """
    data = data_dir(repo)
    (data / LOGS_DIR).mkdir(parents=True, exist_ok=True)
    (data / SAVED_DIR).mkdir(parents=True, exist_ok=True)
    path = data / SOURCE_FILE
    pq.write_table(table, path, row_group_size=8192)
    pq.write_table(PREDICTIONS_SCHEMA.empty_table(), data / PREDICTIONS_FILE)
    return path


def require_source_data(repo: str | Path) -> Path:
    """The mnist parquet of ``repo``; a FileNotFoundError naming the notebook
    that writes it if it is missing."""
    path = data_dir(repo) / SOURCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: run 01_prepare_mnist.ipynb first")
    return path


def apply(repo: str | Path) -> str:
    """``feast apply`` the repo (in a child process); returns what Feast printed."""
    return feast_apply(repo)


def registry_summary(store: Any) -> pd.DataFrame:
    """The objects a repo's registry holds, one row each."""
    rows = []
    for entity in store.list_entities():
        rows.append(("entity", entity.name, f"join key {entity.join_key}"))
    for source in store.list_data_sources():
        rows.append(("data source", source.name, getattr(source, "path", "")))
    for view in store.list_feature_views():
        types = sorted({str(f.dtype) for f in view.features})
        rows.append(
            (
                "feature view",
                view.name,
                f"{len(view.features)} features ({', '.join(types)}), "
                f"entities {view.entities}, source {view.batch_source.name}",
            )
        )
    for service in store.list_feature_services():
        views = [p.name for p in service.feature_view_projections]
        logging = "with" if service.logging_config else "without"
        rows.append(("feature service", service.name, f"views {views}, {logging} logging"))
    for dataset in store.list_saved_datasets():
        rows.append(("saved dataset", dataset.name, str(dataset.storage.to_proto()).strip()))
    return pd.DataFrame(rows, columns=["kind", "name", "details"])


def create_feature_repo(
    repo: str | Path, template: str | Path, data: MnistData, apply_it: bool = True
) -> Path:
    """The whole repo in one call: the ``template``'s definitions, ``data``'s
    source rows, ``feast apply``."""
    repo = write_feature_repo(repo, template)
    write_source_data(repo, feature_table(data))
    if apply_it:
        apply(repo)
    return repo


def write_client_repo(path: str | Path, host: str, port: int, server_repo: str | Path) -> Path:
    """A client repo at ``path`` whose offline store is the flightlab server at
    ``host:port``; it reads the registry the server's repo wrote."""
    from flightlab.testing.sample_repo import client_repo_yaml

    path = Path(path)
    (path / "data").mkdir(parents=True, exist_ok=True)
    registry = (data_dir(server_repo) / "registry.db").resolve()
    (path / "feature_store.yaml").write_text(
        client_repo_yaml(host, port, project=PROJECT, registry=registry)
    )
    return path
