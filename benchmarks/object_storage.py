"""Parquet in object storage against the same parquet on local disk, through flightlab's engine.

    .venv/bin/python benchmarks/object_storage.py              # ~3-5 min on 2 cores
    .venv/bin/python benchmarks/object_storage.py --quick      # 1 repeat, 10k rows only
    .venv/bin/python benchmarks/run.py --stores s3             # the same, in the benchmark's table

One 1M-row driver-stats source (10k drivers over 30 days, in time order,
row groups of 128Ki rows, 1% of rows repeating a (driver, time) pair with a
later created timestamp), written once as a local parquet file and uploaded
to a loopback S3 server (moto's server mode, ``flightlab.testing.s3``). The
same point-in-time retrieval (10k and 100k entity rows over the whole range,
a one-day TTL, three features) is timed from the local file and from the S3
object: through the engine in this process, and through ``flightlab
serve_offline --engine auto`` servers with flightlab's client. Each figure is
a median of interleaved runs; the ratio is local time / S3 time (1.0: as
fast as local), and the target is S3 >= 0.5 x local. Every S3 answer is
checked against the local one. A one-day pull shows the time-range pushdown:
the bytes the S3 server sent against the object's size. With ``--json PATH``
it also writes every timing there: ``benchmarks/run.py`` runs it so (the
store ``s3``) and judges the target with the others (targets.toml).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from feast import Entity, FeatureStore, FeatureView, Field, FileSource
from feast.types import Float32, Float64
from feast.value_type import ValueType

from flightlab.client.transport import OfflineFlightClient
from flightlab.engine import Engine, EngineSettings
from flightlab.testing.processes import running_server, serve_offline_command
from flightlab.testing.s3 import S3Server
from flightlab.wire import protocol

START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS, DRIVERS, ROWS = 30, 10_000, 1_000_000
BUCKET, KEY = "features", "driver_stats/driver_stats.parquet"
FEATURES = ("driver_stats:conv_rate", "driver_stats:acc_rate", "driver_stats:avg_daily_trips")
TARGET = 0.5


def driver_stats(rows: int = ROWS, seed: int = 11) -> pa.Table:
    rng = np.random.default_rng(seed)
    start_us = int(START.timestamp() * 1_000_000)
    stamps = np.sort(start_us + rng.integers(0, DAYS * 86_400, rows) * 1_000_000)
    drivers = rng.integers(0, DRIVERS, rows, dtype="int64")
    again = rng.random(rows) < 0.01  # a second version of the previous row
    again[0] = False
    drivers[again] = drivers[np.flatnonzero(again) - 1]
    stamps[again] = stamps[np.flatnonzero(again) - 1]
    created = stamps + rng.integers(0, 3_600_000_000, rows)
    created[again] = created[np.flatnonzero(again) - 1] + 3_600_000_000
    utc = pa.timestamp("us", tz="UTC")
    return pa.table(
        {
            "driver_id": pa.array(drivers),
            "event_timestamp": pa.array(stamps, utc),
            "created": pa.array(created, utc),
            "conv_rate": pa.array(rng.random(rows).astype("float32")),
            "acc_rate": pa.array(rng.random(rows).astype("float32")),
            "avg_daily_trips": pa.array(rng.random(rows) * 100),
        }
    )


def entity_rows(rows: int, seed: int = 5) -> pa.Table:
    """Random drivers (1% unknown) at random times from a day into the data to a day past it."""
    rng = np.random.default_rng(seed + rows)
    low = int((START + timedelta(days=1)).timestamp() * 1_000_000)
    high = int((START + timedelta(days=DAYS + 1)).timestamp() * 1_000_000)
    return pa.table(
        {
            "driver_id": pa.array(rng.integers(0, DRIVERS + 100, rows, dtype="int64")),
            "event_timestamp": pa.array(rng.integers(low, high, rows), pa.timestamp("us", "UTC")),
        }
    )


def make_repo(path: Path, source_path: str, endpoint: str | None) -> FeatureStore:
    (path / "data").mkdir(parents=True, exist_ok=True)
    (path / "feature_store.yaml").write_text(
        "project: object_storage_bench\nprovider: local\n"
        "registry:\n  path: data/registry.db\n  cache_ttl_seconds: 0\n"
        "online_store:\n  type: sqlite\n  path: data/online.db\n"
        "offline_store:\n  type: duckdb\nentity_key_serialization_version: 3\n"
    )
    driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
    view = FeatureView(
        name="driver_stats",
        entities=[driver],
        ttl=timedelta(days=1),
        schema=[
            Field(name="conv_rate", dtype=Float32),
            Field(name="acc_rate", dtype=Float32),
            Field(name="avg_daily_trips", dtype=Float64),
        ],
        source=FileSource(
            name="driver_stats_source",
            path=source_path,
            timestamp_field="event_timestamp",
            created_timestamp_column="created",
            s3_endpoint_override=endpoint,
        ),
    )
    store = FeatureStore(repo_path=str(path))
    store.apply([driver, view])
    return store


# --- the two ways of asking --------------------------------------------------------------


def in_process(store: FeatureStore, engine: Engine) -> Callable[[pa.Table], pa.Table]:
    view = store.get_feature_view("driver_stats")

    def retrieve(entities: pa.Table) -> pa.Table:
        stream = engine.historical(store.config, [view], list(FEATURES), [], entities, False)
        assert stream is not None, "the engine did not answer"
        return stream.read_all()

    return retrieve


def through_server(location: str) -> Callable[[pa.Table], pa.Table]:
    def retrieve(entities: pa.Table) -> pa.Table:
        request = protocol.GetHistoricalFeatures(features=FEATURES, entity_df=entities)
        with OfflineFlightClient(location, timeout=600) as client:
            return client.fetch(request)

    return retrieve


def same_answer(local: pa.Table, s3: pa.Table) -> bool:
    keys = [("driver_id", "ascending"), ("event_timestamp", "ascending")]
    return local.sort_by(keys).equals(s3.sort_by(keys))


def timed(retrieve: Callable[[pa.Table], pa.Table], entities: pa.Table) -> tuple[float, pa.Table]:
    start = time.perf_counter()
    result = retrieve(entities)
    return time.perf_counter() - start, result


def compare(name: str, way: str, local, s3, entities: pa.Table, repeats: int) -> dict:
    times: dict[str, list[float]] = {"local": [], "s3": []}
    _, expected = timed(local, entities)  # warm-up, and the answers compared
    _, got = timed(s3, entities)
    for _ in range(repeats):
        for which, retrieve in (("local", local), ("s3", s3)):
            seconds, _ = timed(retrieve, entities)
            times[which].append(seconds)
    local_s, s3_s = (statistics.median(times[w]) for w in ("local", "s3"))
    ratio = local_s / s3_s
    row = {
        "case": name,
        "way": way,
        "rows": entities.num_rows,
        "local_s": local_s,
        "s3_s": s3_s,
        "local_times": times["local"],
        "s3_times": times["s3"],
        "result_rows": got.num_rows,
        "result_bytes": got.nbytes,
        "ratio": ratio,
        "same": same_answer(expected, got),
        "met": ratio >= TARGET,
    }
    print(
        f"{name:<34} {entities.num_rows:>7,} rows  local {local_s * 1000:7.0f} ms  "
        f"S3 {s3_s * 1000:7.0f} ms  ratio {ratio:4.2f}  same answer: {row['same']}  "
        f"{'MET' if row['met'] else 'MISSED'}",
        flush=True,
    )
    return row


def one_day_pull(engine: Engine, store: FeatureStore) -> pa.Table:
    stream = engine.pull(
        store.config,
        store.get_data_source("driver_stats_source"),
        ["driver_id"],
        ["conv_rate", "acc_rate", "avg_daily_trips"],
        "event_timestamp",
        "created",
        START + timedelta(days=14),
        START + timedelta(days=15),
        latest=False,
    )
    assert stream is not None
    return stream.read_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 10k entity rows only")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads per request")
    parser.add_argument("--work", type=Path, help="where the data and repos go (a temp dir)")
    parser.add_argument("--json", type=Path, help="write every timing here too")
    args = parser.parse_args(argv)
    repeats, sizes = (1, (10_000,)) if args.quick else (args.repeats, (10_000, 100_000))
    work = args.work or Path(tempfile.mkdtemp(prefix="flightlab-object-storage-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "driver_stats.parquet"
    if not data.exists():
        pq.write_table(driver_stats(), data, row_group_size=128 * 1024)
    size_mb = data.stat().st_size / 1e6
    print(f"source: {ROWS:,} rows, {size_mb:.1f} MB ({data}); cores: {os.cpu_count()}")
    rows: list[dict] = []
    notes: list[str] = []
    with S3Server(log=work / "moto.log") as s3:
        os.environ.update(s3.client_env())
        s3.create_bucket(BUCKET)
        s3.upload_file(data, BUCKET, KEY)
        local = make_repo(work / "local_repo", str(data), None)
        remote = make_repo(work / "s3_repo", f"s3://{BUCKET}/{KEY}", s3.endpoint)
        engine = Engine(EngineSettings(threads=args.threads))
        print(f"\nengine in this process ({args.threads} DuckDB threads)")
        for size in sizes:
            entities = entity_rows(size)
            rows.append(
                compare(
                    "engine, in-process",
                    "engine",
                    in_process(local, engine),
                    in_process(remote, engine),
                    entities,
                    repeats,
                )  # fmt: skip
            )
        print("\nflightlab serve_offline --engine auto, flightlab's client")
        options = ("--engine", "auto", "--engine-threads", str(args.threads), "--reuse-bytes", "0")
        env = s3.client_env()
        with (
            running_server(serve_offline_command(local.repo_path, *options), env=env) as a,
            running_server(serve_offline_command(remote.repo_path, *options), env=env) as b,
        ):
            for size in sizes:
                entities = entity_rows(size)
                rows.append(
                    compare(
                        "flightlab server + client",
                        "flightlab",
                        through_server(a.location),
                        through_server(b.location),
                        entities,
                        repeats,
                    )  # fmt: skip
                )
        print("\na one-day pull (pull_all, 1 of 30 days), engine in-process")
        size = data.stat().st_size
        for name, store in (("local", local), ("S3", remote)):
            s3.reset_counts()
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                pulled = one_day_pull(engine, store).num_rows
                seconds.append(time.perf_counter() - start)
            line = f"{name:<6} {statistics.median(seconds) * 1000:6.0f} ms, {pulled:,} rows"
            if name == "S3":
                fetched = s3.counts().bytes_of(KEY) / repeats
                line += f", {fetched / 1e6:.1f} of {size / 1e6:.1f} MB fetched per pull"
            print(line, flush=True)
            notes.append(f"a one-day pull (pull_all, 1 of 30 days), engine in-process: {line}")
    met = all(row["met"] for row in rows) and all(row["same"] for row in rows)
    worst = min(row["ratio"] for row in rows)
    print(f"\n{'MET' if met else 'MISSED'}: S3 >= {TARGET} x local (worst ratio {worst:.2f})")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "notes": notes}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
