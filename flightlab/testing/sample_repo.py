"""A small, real Feast repo to try flightlab on (and to test it with).

``create_sample_repo(path)`` writes parquet data, ``feature_store.yaml`` and
feature definitions (two entities, two feature views, an on-demand feature
view, a feature service with a logging config), then runs ``feast apply``.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from flightlab.testing.processes import feast_apply

OFFLINE_STORES = ("duckdb", "file")
DRIVER_IDS = tuple(range(1001, 1011))
CUSTOMER_IDS = tuple(range(2001, 2006))
# Data covers [START, START + DAYS): fixed, so every run sees the same rows.
START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 5

FEATURE_STORE_YAML = """\
project: flightlab_sample
provider: local
registry:
  path: data/registry.db
  cache_ttl_seconds: 0
online_store:
  type: sqlite
  path: data/online.db
offline_store:
  type: {offline_store}
entity_key_serialization_version: 3
"""

# The sources, apart: the backend repos (flightlab.testing.backend_repos) swap them.
FILE_SOURCES = """\
driver_stats_source = FileSource(
    name="driver_stats_source",
    path=str(DATA / "driver_stats.parquet"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)
customer_stats_source = FileSource(
    name="customer_stats_source",
    path=str(DATA / "customer_stats.parquet"),
    timestamp_field="event_timestamp",
)
"""

DEFINITIONS_TEMPLATE = '''\
"""Feature definitions of the flightlab sample repo."""

from datetime import timedelta
from pathlib import Path

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource
from feast.feature_logging import LoggingConfig
from feast.infra.offline_stores.file_source import FileLoggingDestination
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float32, Float64, Int64

DATA = Path(__file__).parent / "data"

driver = Entity(name="driver", join_keys=["driver_id"])
customer = Entity(name="customer", join_keys=["customer_id"])

{file_sources}
driver_stats = FeatureView(
    name="driver_stats",
    entities=[driver],
    ttl=timedelta(days=2),
    schema=[
        Field(name="conv_rate", dtype=Float32),
        Field(name="acc_rate", dtype=Float32),
        Field(name="avg_daily_trips", dtype=Int64),
    ],
    source=driver_stats_source,
)
customer_stats = FeatureView(
    name="customer_stats",
    entities=[customer],
    ttl=timedelta(days=3),
    schema=[
        Field(name="lifetime_trips", dtype=Int64),
        Field(name="avg_rating", dtype=Float32),
    ],
    source=customer_stats_source,
)

val_to_add = RequestSource(name="val_to_add", schema=[Field(name="val_to_add", dtype=Int64)])


@on_demand_feature_view(
    sources=[driver_stats, val_to_add],
    schema=[Field(name="conv_rate_plus_val", dtype=Float64)],
)
def conv_rate_plus_val(inputs: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame()
    out["conv_rate_plus_val"] = inputs["conv_rate"] + inputs["val_to_add"]
    return out


driver_activity = FeatureService(
    name="driver_activity",
    features=[driver_stats, customer_stats[["avg_rating"]]],
    logging_config=LoggingConfig(
        destination=FileLoggingDestination(path=str(DATA / "logs")),
    ),
)
'''


def definitions_with(sources: str) -> str:
    """The repo's definitions with ``sources`` (Python text defining
    ``driver_stats_source`` and ``customer_stats_source``) for its file sources."""
    return DEFINITIONS_TEMPLATE.replace("{file_sources}", sources)


DEFINITIONS = definitions_with(FILE_SOURCES)


def driver_stats_frame(seed: int = 7) -> pd.DataFrame:
    """Hourly stats for each driver; ``created`` lags the event by a minute."""
    rng = np.random.default_rng(seed)
    hours = pd.date_range(START, periods=DAYS * 24, freq="h", unit="us")
    frame = pd.DataFrame(
        [(d, t) for d in DRIVER_IDS for t in hours], columns=["driver_id", "event_timestamp"]
    )
    n = len(frame)
    frame["conv_rate"] = rng.random(n).astype("float32")
    frame["acc_rate"] = rng.random(n).astype("float32")
    frame["avg_daily_trips"] = rng.integers(0, 1000, n).astype("int64")
    frame["created"] = frame["event_timestamp"] + pd.Timedelta(minutes=1)
    return frame


def customer_stats_frame(seed: int = 11) -> pd.DataFrame:
    """Daily stats for each customer."""
    rng = np.random.default_rng(seed)
    days = pd.date_range(START, periods=DAYS, freq="D", unit="us")
    frame = pd.DataFrame(
        [(c, t) for c in CUSTOMER_IDS for t in days], columns=["customer_id", "event_timestamp"]
    )
    n = len(frame)
    frame["lifetime_trips"] = rng.integers(0, 5000, n).astype("int64")
    frame["avg_rating"] = (1 + 4 * rng.random(n)).astype("float32")
    return frame


def entity_frame(rows: int = 50, seed: int = 3, with_request_data: bool = True) -> pd.DataFrame:
    """Entity rows to retrieve features for: random drivers, customers, times."""
    rng = np.random.default_rng(seed)
    span = int(timedelta(days=DAYS).total_seconds())
    frame = pd.DataFrame(
        {
            "driver_id": rng.choice(DRIVER_IDS, rows).astype("int64"),
            "customer_id": rng.choice(CUSTOMER_IDS, rows).astype("int64"),
            "event_timestamp": pd.to_datetime(
                [START + timedelta(seconds=int(s)) for s in rng.integers(0, span, rows)]
            ).as_unit("us"),
        }
    )
    if with_request_data:
        frame["val_to_add"] = rng.integers(0, 10, rows).astype("int64")
    return frame


def create_sample_repo(path: str | Path, offline_store: str = "duckdb", apply: bool = True) -> Path:
    """Write the sample repo at ``path`` and (by default) ``feast apply`` it."""
    if offline_store not in OFFLINE_STORES:
        raise ValueError(f"offline_store must be one of {OFFLINE_STORES}, not {offline_store!r}")
    repo = Path(path)
    data = repo / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "logs").mkdir(exist_ok=True)
    driver_stats_frame().to_parquet(data / "driver_stats.parquet", index=False)
    customer_stats_frame().to_parquet(data / "customer_stats.parquet", index=False)
    (repo / "feature_store.yaml").write_text(FEATURE_STORE_YAML.format(offline_store=offline_store))
    (repo / "definitions.py").write_text(textwrap.dedent(DEFINITIONS))
    if apply:
        feast_apply(repo)
    return repo


def client_repo_yaml(
    host: str,
    port: int,
    project: str = "flightlab_sample",
    registry: str | Path = "data/registry.db",
) -> str:
    """A ``feature_store.yaml`` whose offline store is a flightlab server."""
    return (
        f"project: {project}\n"
        "provider: local\n"
        "registry:\n"
        f"  path: {registry}\n"
        "  cache_ttl_seconds: 0\n"
        "online_store:\n"
        "  type: sqlite\n"
        "  path: data/online.db\n"
        "offline_store:\n"
        "  type: flightlab.client.RemoteOfflineStore\n"
        f"  host: {host}\n"
        f"  port: {port}\n"
        "entity_key_serialization_version: 3\n"
    )
