"""A repo and requests large enough that the engine spills: the data of the
engine drills (:mod:`~flightlab.testing.faults.engine`).

One feature view, ``user_stats``: six numeric features of ``users`` users
over ``DAYS`` days in one parquet file (the shape of the benchmark's repo,
built here at any size so the drills need nothing from ``benchmarks/``).
Entity rows are generated from a seed, so a client process and the
in-process reference build the same ones.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flightlab.testing.processes import feast_apply
from flightlab.wire import protocol

START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 30
FEATURES = ("clicks", "purchases", "spend", "ctr", "score", "rating")
FEATURE_REFS = tuple(f"user_stats:{name}" for name in FEATURES)

_YAML = """\
project: flightlab_large
provider: local
registry:
  path: data/registry.db
  cache_ttl_seconds: 0
online_store:
  type: sqlite
  path: data/online.db
offline_store:
  type: duckdb
entity_key_serialization_version: 3
"""

_DEFINITIONS = """\
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource
from feast.types import Float32, Float64, Int64

user = Entity(name="user", join_keys=["user_id"])

user_stats = FeatureView(
    name="user_stats",
    entities=[user],
    ttl=timedelta(days={days}),
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
        path={path!r},
        timestamp_field="event_timestamp",
    ),
)
"""


def user_stats_definitions(ttl_days: int, source_path: str) -> str:
    """The ``definitions.py`` of a repo with the ``user_stats`` view (also the
    benchmark's repo): its TTL in days, its parquet source's path."""
    return _DEFINITIONS.format(days=ttl_days, path=source_path)


def create_large_repo(path: Path, source_rows: int, users: int | None = None) -> Path:
    """Write a repo whose ``user_stats`` source has ``source_rows`` rows (of
    ``users`` users, default a tenth of the rows) and ``feast apply`` it."""
    users = users or max(1, source_rows // 10)
    data = path / "data"
    data.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        user_stats_table(source_rows, users), data / "user_stats.parquet", row_group_size=250_000
    )
    (path / "feature_store.yaml").write_text(_YAML)
    # An absolute path: Feast's duckdb store reads a relative one from the
    # working directory, the engine from the repo.
    source = str((data / "user_stats.parquet").resolve())
    (path / "definitions.py").write_text(user_stats_definitions(DAYS + 1, source))
    (path / "users.txt").write_text(str(users))  # what entity_rows draws from
    feast_apply(path)
    return path


def user_stats_table(rows: int, users: int, seed: int = 7) -> pa.Table:
    """``rows`` feature rows of ``users`` users at random microsecond times."""
    rng = np.random.default_rng(seed)
    start_us = int(START.timestamp() * 1_000_000)
    stamps = start_us + rng.integers(0, DAYS * 86_400 * 1_000_000, rows)
    return pa.table(
        {
            "user_id": pa.array(rng.integers(0, users, rows, dtype="int64")),
            "event_timestamp": pa.array(stamps, pa.timestamp("us", tz="UTC")),
            "clicks": pa.array(rng.integers(0, 500, rows, dtype="int64")),
            "purchases": pa.array(rng.integers(0, 20, rows, dtype="int64")),
            "spend": pa.array(rng.random(rows) * 100),
            "ctr": pa.array(rng.random(rows).astype("float32")),
            "score": pa.array(rng.standard_normal(rows).astype("float32")),
            "rating": pa.array(1 + 4 * rng.random(rows)),
        }
    )


def entity_rows(repo: Path, rows: int, seed: int = 3) -> pa.Table:
    """``rows`` entity rows of ``repo``'s users at random times in its range."""
    users = int((repo / "users.txt").read_text())
    rng = np.random.default_rng(seed + rows)
    lo = int((START + timedelta(days=1)).timestamp() * 1_000_000)
    hi = int((START + timedelta(days=DAYS)).timestamp() * 1_000_000)
    return pa.table(
        {
            "user_id": pa.array(rng.integers(0, users, rows, dtype="int64")),
            "event_timestamp": pa.array(rng.integers(lo, hi, rows), pa.timestamp("us", tz="UTC")),
        }
    )


def large_request(repo: Path, rows: int, seed: int = 3) -> protocol.GetHistoricalFeatures:
    """The retrieval of every feature for ``rows`` entity rows."""
    return protocol.GetHistoricalFeatures(
        features=FEATURE_REFS, entity_df=entity_rows(repo, rows, seed)
    )
