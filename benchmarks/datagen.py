"""The benchmark's Feast repo and data: one generated data set, two offline stores.

``build_repos(root)`` writes the feature data once (parquet under
``root/data``) and one Feast repo per offline store (``root/repos/<store>``)
whose definitions point at the same files, then runs ``feast apply`` on each.

- ``user_stats``: six int/float features of ``USERS`` users, ``ROWS_PER_USER``
  rows each at random times over ``DAYS`` days (1M feature rows);
- MNIST, in its own repo per store (``root/mnist/<store>``): the 70,000
  images as 28 ``Array(Float32)`` features (one per pixel row, 28 values
  each), ``label`` and ``split``, keyed by ``image_id``. Built by the demo's
  ``flightlab.mnist.create_feature_repo`` when that module is there (its yaml
  says duckdb; the file repo gets ``type: file``), otherwise by the fallback
  here, from the same ``notebooks/mnist_demo/data/mnist.npz``.

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

from flightlab.testing.processes import feast_apply

STORES = ("duckdb", "file")
PROJECT = "flightlab_bench"
START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 30
USERS = 100_000
ROWS_PER_USER = 10
FEATURES = ("clicks", "purchases", "spend", "ctr", "score", "rating")
FEATURE_REFS = tuple(f"user_stats:{name}" for name in FEATURES)
MNIST_ROWS = 28
MNIST_PROJECT = "flightlab_bench_mnist"  # the fallback repo's project
MNIST_REFS = tuple(f"mnist:row_{i:02d}" for i in range(MNIST_ROWS)) + (
    "mnist:label",
    "mnist:split",
)
# The MNIST rows are stamped at START; entity rows ask for them a day later.
MNIST_EVENT = START
MNIST_ASKED = START + timedelta(days=1)
# Bump when the generated data or definitions change: stale repos are rebuilt.
DATA_VERSION = 3

FEATURE_STORE_YAML = """\
project: {project}
provider: local
registry:
  path: data/registry.db
  cache_ttl_seconds: 0
online_store:
  type: sqlite
  path: data/online.db
offline_store:
  type: {store}
entity_key_serialization_version: 3
"""

DEFINITIONS = '''\
"""Feature definitions of the flightlab benchmark repo (generated)."""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource
from feast.types import Float32, Float64, Int64

user = Entity(name="user", join_keys=["user_id"])

user_stats = FeatureView(
    name="user_stats",
    entities=[user],
    ttl=timedelta(days={ttl_days}),
    schema=[
        Field(name="clicks", dtype=Int64),
        Field(name="purchases", dtype=Int64),
        Field(name="spend", dtype=Float64),
        Field(name="ctr", dtype=Float32),
        Field(name="score", dtype=Float32),
        Field(name="rating", dtype=Float64),
    ],
    source=FileSource(
        name="user_stats_source",
        path={user_stats_path!r},
        timestamp_field="event_timestamp",
    ),
)
'''

MNIST_DEFINITIONS = '''\
"""MNIST definitions of the flightlab benchmark (the fallback, generated)."""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource
from feast.types import Array, Float32, Int64, String

image = Entity(name="image", join_keys=["image_id"])

mnist = FeatureView(
    name="mnist",
    entities=[image],
    ttl=timedelta(days=365),
    schema=[
{mnist_fields}
        Field(name="label", dtype=Int64),
        Field(name="split", dtype=String),
    ],
    source=FileSource(
        name="mnist_source",
        path={mnist_path!r},
        timestamp_field="event_timestamp",
    ),
)
'''


def user_stats_table(seed: int = 7) -> pa.Table:
    """The feature rows: ``ROWS_PER_USER`` per user, microsecond timestamps
    (the duckdb store reads no finer ones)."""
    rng = np.random.default_rng(seed)
    n = USERS * ROWS_PER_USER
    day_us = 86_400 * 1_000_000
    start_us = int(START.timestamp() * 1_000_000)
    stamps = start_us + rng.integers(0, DAYS * day_us, n)
    # Every user has a row on the first day and the TTL covers the range, so
    # every entity row (from day 1 on) finds features in both stores, which
    # then return the same rows.
    stamps[::ROWS_PER_USER] = start_us + rng.integers(0, day_us, USERS)
    return pa.table(
        {
            "user_id": pa.array(np.repeat(np.arange(USERS, dtype="int64"), ROWS_PER_USER)),
            "event_timestamp": pa.array(stamps, pa.timestamp("us", tz="UTC")),
            "clicks": pa.array(rng.integers(0, 500, n, dtype="int64")),
            "purchases": pa.array(rng.integers(0, 20, n, dtype="int64")),
            "spend": pa.array(rng.random(n) * 100),
            "ctr": pa.array(rng.random(n).astype("float32")),
            "score": pa.array(rng.standard_normal(n).astype("float32")),
            "rating": pa.array(1 + 4 * rng.random(n)),
        }
    )


def mnist_table(npz: Path = MNIST_NPZ) -> pa.Table:
    """The 70,000 images, one ``Array(Float32)`` column per pixel row (0..1)."""
    data = np.load(npz)
    images = np.concatenate([data["x_train"], data["x_test"]]).astype("float32") / 255.0
    labels = np.concatenate([data["y_train"], data["y_test"]]).astype("int64")
    n = len(images)
    split = np.where(np.arange(n) < len(data["x_train"]), "train", "test")
    columns: dict[str, pa.Array] = {
        "image_id": pa.array(np.arange(n, dtype="int64")),
        "event_timestamp": pa.array(
            np.full(n, int(MNIST_EVENT.timestamp() * 1_000_000)), pa.timestamp("us", tz="UTC")
        ),
    }
    offsets = pa.array(np.arange(0, (n + 1) * 28, 28, dtype="int32"))
    for i in range(MNIST_ROWS):
        values = pa.array(np.ascontiguousarray(images[:, i, :]).reshape(-1))
        columns[f"row_{i:02d}"] = pa.ListArray.from_arrays(offsets, values)
    columns["label"] = pa.array(labels)
    columns["split"] = pa.array(split.tolist(), pa.string())
    return pa.table(columns)


def entity_frame(rows: int, seed: int = 3) -> pd.DataFrame:
    """``rows`` entity rows: random users at random times (microseconds, UTC)
    from a day into the data range to its end."""
    rng = np.random.default_rng(seed + rows)
    lo = int((START + timedelta(days=1)).timestamp() * 1_000_000)
    hi = int((START + timedelta(days=DAYS)).timestamp() * 1_000_000)
    stamps = rng.integers(lo, hi, rows).astype("datetime64[us]")
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, USERS, rows, dtype="int64"),
            "event_timestamp": pd.Series(stamps).dt.tz_localize("UTC"),
        }
    )


def demo_mnist():
    """``flightlab.mnist`` if it has what the benchmark uses, else None."""
    try:
        from flightlab import mnist
    except ImportError:
        return None
    needed = ("create_feature_repo", "feature_refs", "entity_frame", "PROJECT")
    return mnist if all(hasattr(mnist, name) for name in needed) else None


def mnist_builder() -> str:
    return "flightlab.mnist" if demo_mnist() is not None else "benchmarks/datagen.py (fallback)"


def mnist_case():
    """The full MNIST retrieval: (entity frame, feature refs)."""
    demo = demo_mnist()
    if demo is not None:
        return demo.entity_frame(), list(demo.feature_refs())
    n = 70_000
    stamps = np.full(n, int(MNIST_ASKED.timestamp() * 1_000_000)).astype("datetime64[us]")
    frame = pd.DataFrame(
        {
            "image_id": np.arange(n, dtype="int64"),
            "event_timestamp": pd.Series(stamps).dt.tz_localize("UTC"),
        }
    )
    return frame, list(MNIST_REFS)


def _definitions(data: Path) -> str:
    return DEFINITIONS.format(ttl_days=DAYS + 1, user_stats_path=str(data / "user_stats.parquet"))


def _mnist_definitions(data: Path) -> str:
    fields = "\n".join(
        f'        Field(name="row_{i:02d}", dtype=Array(Float32)),' for i in range(MNIST_ROWS)
    )
    return MNIST_DEFINITIONS.format(mnist_path=str(data / "mnist.parquet"), mnist_fields=fields)


def _fingerprint() -> str:
    spec = {
        "version": DATA_VERSION,
        "users": USERS,
        "rows_per_user": ROWS_PER_USER,
        "days": DAYS,
        "definitions": hashlib.sha256((DEFINITIONS + MNIST_DEFINITIONS).encode()).hexdigest(),
        "mnist": mnist_builder(),
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
    root: Path, stores: tuple[str, ...] = STORES, mnist: bool = True, log=print
) -> dict[tuple[str, str], Path]:
    """Write the data and the applied repos under ``root``, reusing what an
    earlier run with the same spec left there. Returns {(store, "rows" or
    "mnist"): repo}."""
    root = root.resolve()
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    stamp = root / "spec.json"
    fresh = stamp.is_file() and stamp.read_text() == _fingerprint()
    if not fresh:
        log(f"data: writing {USERS * ROWS_PER_USER:,} user_stats rows")
        pq.write_table(user_stats_table(), data / "user_stats.parquet", row_group_size=250_000)
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
            FEATURE_STORE_YAML.format(project=PROJECT, store=store)
        )
        (repo / "definitions.py").write_text(_definitions(data))
        feast_apply(repo)
    if mnist:
        demo = demo_mnist()
        for store in stores:
            repo = root / "mnist" / store
            repos[store, "mnist"] = repo
            if fresh and (repo / "data" / "registry.db").is_file():
                continue
            log(f"data: writing and applying the {store} MNIST repo with {mnist_builder()}")
            if demo is not None:
                demo.create_feature_repo(
                    repo, MNIST_REPO, demo.load_mnist(MNIST_NPZ), apply_it=False
                )
                _use_store(repo, store)
            else:
                (repo / "data").mkdir(parents=True, exist_ok=True)
                pq.write_table(mnist_table(), repo / "data" / "mnist.parquet", row_group_size=8192)
                (repo / "feature_store.yaml").write_text(
                    FEATURE_STORE_YAML.format(project=MNIST_PROJECT, store=store)
                )
                (repo / "definitions.py").write_text(_mnist_definitions(repo / "data"))
            feast_apply(repo)
    stamp.write_text(_fingerprint())
    return repos


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
    lines = [f"  {key}: {value}" for key, value in offline_store.items()]
    return (
        f"project: {repo_project(repo)}\n"
        "provider: local\n"
        "registry:\n"
        f"  path: {repo / 'data' / 'registry.db'}\n"
        "  cache_ttl_seconds: 0\n"
        "online_store:\n"
        "  type: sqlite\n"
        f"  path: {online}\n"
        "offline_store:\n" + "\n".join(lines) + "\n"
        "entity_key_serialization_version: 3\n"
    )
