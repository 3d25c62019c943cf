"""The benchmark's Feast repo and data: one generated data set, two offline stores.

``build_repos(root)`` writes the feature data once (parquet under
``root/data``) and one Feast repo per offline store (``root/repos/<store>``)
whose definitions point at the same files, then runs ``feast apply`` on each.

- ``user_stats``: six int/float features of ``USERS`` users, ``ROWS_PER_USER``
  rows each at random times over ``DAYS`` days (1M feature rows);
- MNIST, in its own repo per store (``root/mnist/<store>``): the 70,000
  images as 28 ``Array(Float32)`` features (one per pixel row, 28 values
  each), ``label`` and ``split``, keyed by ``image_id``: the demo's repo and
  data (``flightlab.mnist.create_feature_repo``), its yaml switched to
  ``type: file`` for the file store.

Entity frames are generated from a seed, so every process that needs one
(servers never do; clients do) rebuilds the same rows without passing files.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from paths import MNIST_NPZ, MNIST_REPO

from flightlab import mnist
from flightlab.testing.faults.large import user_stats_definitions
from flightlab.testing.processes import feast_apply

STORES = ("duckdb", "file")
PROJECT = "flightlab_bench"
START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 30
USERS = 100_000
ROWS_PER_USER = 10
FEATURES = ("clicks", "purchases", "spend", "ctr", "score", "rating")
FEATURE_REFS = tuple(f"user_stats:{name}" for name in FEATURES)
# The large data set (``--large``): the same view over 10M feature rows.
LARGE_USERS = 1_000_000
LARGE_VARIANT = "src10m"  # its cases: rows:N:src10m
# Bump when the generated data or definitions change: stale repos are rebuilt.
DATA_VERSION = 3

FEATURE_STORE_YAML = """\
project: {project}
provider: local
registry:
  path: {registry}
  cache_ttl_seconds: 0
online_store:
  type: sqlite
  path: {online}
offline_store:
{offline_store}
entity_key_serialization_version: 3
"""


def user_stats_table(seed: int = 7, users: int = USERS) -> pa.Table:
    """The feature rows: ``ROWS_PER_USER`` per user, microsecond timestamps
    (the duckdb store reads no finer ones)."""
    rng = np.random.default_rng(seed)
    n = users * ROWS_PER_USER
    day_us = 86_400 * 1_000_000
    start_us = int(START.timestamp() * 1_000_000)
    stamps = start_us + rng.integers(0, DAYS * day_us, n)
    # Every user has a row on the first day and the TTL covers the range, so
    # every entity row (from day 1 on) finds features in both stores, which
    # then return the same rows.
    stamps[::ROWS_PER_USER] = start_us + rng.integers(0, day_us, users)
    return pa.table(
        {
            "user_id": pa.array(np.repeat(np.arange(users, dtype="int64"), ROWS_PER_USER)),
            "event_timestamp": pa.array(stamps, pa.timestamp("us", tz="UTC")),
            "clicks": pa.array(rng.integers(0, 500, n, dtype="int64")),
            "purchases": pa.array(rng.integers(0, 20, n, dtype="int64")),
            "spend": pa.array(rng.random(n) * 100),
            "ctr": pa.array(rng.random(n).astype("float32")),
            "score": pa.array(rng.standard_normal(n).astype("float32")),
            "rating": pa.array(1 + 4 * rng.random(n)),
        }
    )


def entity_frame(rows: int, seed: int = 3, users: int = USERS) -> pd.DataFrame:
    """``rows`` entity rows: random users (of ``users``) at random times
    (microseconds, UTC) from a day into the data range to its end."""
    rng = np.random.default_rng(seed + rows)
    lo = int((START + timedelta(days=1)).timestamp() * 1_000_000)
    hi = int((START + timedelta(days=DAYS)).timestamp() * 1_000_000)
    stamps = rng.integers(lo, hi, rows).astype("datetime64[us]")
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, users, rows, dtype="int64"),
            "event_timestamp": pd.Series(stamps).dt.tz_localize("UTC"),
        }
    )


def mnist_case() -> tuple[pd.DataFrame, list[str]]:
    """The full MNIST retrieval: (entity frame, feature refs)."""
    return mnist.entity_frame(), mnist.feature_refs()


def _definitions(data: Path) -> str:
    return user_stats_definitions(DAYS + 1, str(data / "user_stats.parquet"))


def _fingerprint(users: int) -> str:
    spec = {
        "version": DATA_VERSION,
        "users": users,
        "rows_per_user": ROWS_PER_USER,
        "days": DAYS,
        "definitions": hashlib.sha256(user_stats_definitions(0, "").encode()).hexdigest(),
    }
    return json.dumps(spec, sort_keys=True)


def _use_store(repo: Path, store: str) -> None:
    yaml = repo / "feature_store.yaml"
    text = yaml.read_text()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("offline_store:"):
            lines[i + 1] = f"  type: {store}"
    yaml.write_text("\n".join(lines) + "\n")


def build_repos(
    root: Path,
    stores: tuple[str, ...] = STORES,
    with_mnist: bool = True,
    log=print,
    users: int = USERS,
) -> dict[tuple[str, str], Path]:
    """Write the data (``users`` x ``ROWS_PER_USER`` feature rows) and the
    applied repos under ``root``, reusing what an earlier run with the same
    spec left there. Returns {(store, "rows" or "mnist"): repo}."""
    root = root.resolve()
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    stamp = root / "spec.json"
    fresh = stamp.is_file() and stamp.read_text() == _fingerprint(users)
    if not fresh:
        log(f"data: writing {users * ROWS_PER_USER:,} user_stats rows")
        table = user_stats_table(users=users)
        pq.write_table(table, data / "user_stats.parquet", row_group_size=250_000)
        del table
        stamp.unlink(missing_ok=True)
    repos: dict[tuple[str, str], Path] = {}
    for store in stores:
        repo = root / "repos" / store
        repos[store, "rows"] = repo
        if fresh and (repo / "data" / "registry.db").is_file():
            continue
        log(f"data: writing and applying the {store} repo ({repo})")
        (repo / "data").mkdir(parents=True, exist_ok=True)
        (repo / "feature_store.yaml").write_text(
            FEATURE_STORE_YAML.format(
                project=PROJECT,
                registry="data/registry.db",
                online="data/online.db",
                offline_store=f"  type: {store}",
            )
        )
        (repo / "definitions.py").write_text(_definitions(data))
        feast_apply(repo)
    for store in stores if with_mnist else ():
        repo = root / "mnist" / store
        repos[store, "mnist"] = repo
        if fresh and (repo / "data" / "registry.db").is_file():
            continue
        log(f"data: writing and applying the {store} MNIST repo ({repo})")
        mnist.create_feature_repo(repo, MNIST_REPO, mnist.load_mnist(MNIST_NPZ), apply_it=False)
        _use_store(repo, store)
        feast_apply(repo)
    stamp.write_text(_fingerprint(users))
    return repos


def build_large_repo(root: Path, log=print) -> Path:
    """The duckdb repo over ``LARGE_USERS`` x ``ROWS_PER_USER`` (10M) feature
    rows, under ``root/large`` (its cases: ``rows:N:src10m``)."""
    repos = build_repos(root / "large", ("duckdb",), with_mnist=False, log=log, users=LARGE_USERS)
    return repos["duckdb", "rows"]


def users_of(case: str) -> int:
    """How many users the data set of a rows case has."""
    return LARGE_USERS if case.endswith(":" + LARGE_VARIANT) else USERS


def user_stats_path(repo: Path) -> Path:
    """The user_stats parquet a benchmark repo reads (shared by its stores)."""
    return repo.resolve().parent.parent / "data" / "user_stats.parquet"


def repo_project(repo: Path) -> str:
    for line in (repo / "feature_store.yaml").read_text().splitlines():
        if line.startswith("project:"):
            return line.split(":", 1)[1].strip()
    raise ValueError(f"no project in {repo / 'feature_store.yaml'}")


def client_repo_yaml(repo: Path, online: Path, offline_store: dict[str, object]) -> str:
    """A client ``feature_store.yaml`` reading the registry of the server's
    ``repo``, with a remote offline store (``offline_store``: its settings)."""
    return FEATURE_STORE_YAML.format(
        project=repo_project(repo),
        registry=repo / "data" / "registry.db",
        online=online,
        offline_store="\n".join(f"  {key}: {value}" for key, value in offline_store.items()),
    )
