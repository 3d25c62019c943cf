"""Times flightlab's engine over a PostgreSQL source with each plan, and the planner's choice.

    .venv/bin/python scripts/pg_plans.py                 # a throwaway cluster; ~10 min on 2 cores
    .venv/bin/python scripts/pg_plans.py --quick         # 10k and 100k entity rows only
    .venv/bin/python scripts/pg_plans.py --port 5432     # an existing flightlab/flightlab database

A 1M-row feature table (10,000 drivers over 2025, an index on (driver_id,
event_timestamp, created)) is loaded with ADBC into PostgreSQL, a Feast repo on
the postgres store reads it, and flightlab's engine answers
get_historical_features in this process (no server, no client: the join
alone) for 10k, 100k and 1M entity rows, spread over the whole year or over
one day, through a view without TTL and one with a 30-day TTL. Each
configuration runs plan A (``pit``: the join in PostgreSQL), plan B
(``fetch``: the window into DuckDB, ASOF join), B-seek (``seek``) and the
planner's choice (``auto``), interleaved, ``--reps`` times; the medians, the
first batch, the rows each plan read from PostgreSQL and the choice go to
stdout as a table and to ``out/pg_plans/results.json``. The README's engine
section quotes a run of it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flightlab.dispatch.planning import plan_historical  # noqa: E402
from flightlab.engine.postgres.settings import PostgresSettings  # noqa: E402
from flightlab.engine.runner import Engine  # noqa: E402
from flightlab.engine.settings import EngineSettings  # noqa: E402
from flightlab.testing.postgres import PostgresServer, start_postgres  # noqa: E402

T0 = datetime(2025, 1, 1, tzinfo=UTC)
ROWS, DRIVERS = 1_000_000, 10_000
PLANS = ("pit", "fetch", "seek", "auto")
DEFINITIONS = """
from datetime import timedelta
from feast import Entity, FeatureView, Field
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
    PostgreSQLSource,
)
from feast.types import Float32, Int64
from feast.value_type import ValueType

driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
source = PostgreSQLSource(name="driver_stats", table="driver_stats",
                          timestamp_field="event_timestamp", created_timestamp_column="created")
schema = [Field(name="conv_rate", dtype=Float32), Field(name="acc_rate", dtype=Float32),
          Field(name="avg_daily_trips", dtype=Int64)]
ds_nottl = FeatureView(name="ds_nottl", entities=[driver], schema=schema, source=source)
ds_ttl = FeatureView(name="ds_ttl", entities=[driver], schema=schema, source=source,
                     ttl=timedelta(days=30))
"""


def load_table(pg: PostgresServer) -> None:
    import adbc_driver_postgresql.dbapi as adbc

    rng = np.random.default_rng(1)
    seconds = np.sort(rng.integers(0, 365 * 86_400, ROWS)) * 1_000_000
    ts = pa.array(seconds + int(T0.timestamp()) * 1_000_000, pa.timestamp("us", "UTC"))
    table = pa.table(
        {
            "driver_id": pa.array(rng.integers(0, DRIVERS, ROWS), pa.int64()),
            "event_timestamp": ts,
            "created": pa.array(seconds + int(T0.timestamp()) * 1_000_000 + 60_000_000,
                                pa.timestamp("us", "UTC")),
            "conv_rate": pa.array(rng.random(ROWS), pa.float32()),
            "acc_rate": pa.array(rng.random(ROWS), pa.float32()),
            "avg_daily_trips": pa.array(rng.integers(0, 1000, ROWS), pa.int64()),
        }
    )  # fmt: skip
    uri = f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{pg.database}"
    with adbc.connect(uri + "?sslmode=disable", autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS driver_stats")
        cur.adbc_ingest("driver_stats", table, mode="create")
        cur.execute("CREATE INDEX ON driver_stats (driver_id, event_timestamp, created)")
        cur.execute("VACUUM ANALYZE driver_stats")


def make_repo(pg: PostgresServer, folder: Path):
    from feast import FeatureStore

    from flightlab.testing.backend_repos import FILE_REGISTRY_YAML, repo_yaml
    from flightlab.testing.processes import feast_apply

    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "feature_store.yaml").write_text(
        repo_yaml(FILE_REGISTRY_YAML, pg.offline_store_yaml(), "pg_plans")
    )
    (folder / "definitions.py").write_text(DEFINITIONS)
    feast_apply(folder)
    return FeatureStore(repo_path=str(folder))


def entity_rows(n: int, spread: str, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    drivers = rng.integers(0, int(DRIVERS * 1.02), n)  # 2 % of them have no rows
    if spread == "year":
        offsets = rng.integers(0, 365 * 86_400, n)
        base = T0
    else:
        offsets = rng.integers(0, 86_400, n)
        base = datetime(2025, 9, 15, tzinfo=UTC)
    stamps = (offsets + int(base.timestamp())) * 1_000_000
    return pa.table(
        {
            "driver_id": pa.array(drivers, pa.int64()),
            "event_timestamp": pa.array(stamps, pa.timestamp("us", "UTC")),
            "request_id": pa.array(np.arange(n), pa.int64()),
        }
    )


def run_once(engine: Engine, store, view: str, rows: pa.Table) -> dict:
    plan = plan_historical(store, (f"{view}:conv_rate", f"{view}:acc_rate",
                                   f"{view}:avg_daily_trips"), (), False)  # fmt: skip
    before = engine.postgres.usage()
    started = time.perf_counter()
    result = engine.historical(store.config, plan.feature_views, plan.feature_refs, [], rows,
                               False)  # fmt: skip
    first = None
    out = 0
    try:
        for batch in result.batches:
            first = first or time.perf_counter() - started
            out += batch.num_rows
    finally:
        result.close()
    seconds = time.perf_counter() - started
    after = engine.postgres.usage()
    return {
        "seconds": seconds,
        "first_batch": first or seconds,
        "rows_out": out,
        "rows_fetched": after.rows_fetched - before.rows_fetched,
        "chosen": after.last.plan if after.last else None,
        "estimates": after.last.estimates if after.last else {},
        "planning": after.last.seconds if after.last else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k entity rows only")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--port", type=int, help="an existing cluster (flightlab/flightlab)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "pg_plans")
    args = parser.parse_args()
    pg = PostgresServer(port=args.port) if args.port else start_postgres()
    try:
        started = time.perf_counter()
        load_table(pg)
        print(f"loaded {ROWS:,} rows in {time.perf_counter() - started:.1f}s", flush=True)
        store = make_repo(pg, Path(tempfile.mkdtemp(prefix="pg-plans-")))
        engines = {p: Engine(EngineSettings(postgres=PostgresSettings(plan=p))) for p in PLANS}
        sizes = (10_000, 100_000) if args.quick else (10_000, 100_000, 1_000_000)
        results = []
        for n in sizes:
            for spread in ("year", "day"):
                rows = entity_rows(n, spread, seed=n)
                for view, ttl in (("ds_nottl", "none"), ("ds_ttl", "30d")):
                    runs: dict[str, list[dict]] = {p: [] for p in PLANS}
                    for _ in range(args.reps):
                        for plan in PLANS:
                            runs[plan].append(run_once(engines[plan], store, view, rows))
                    row = {"entity_rows": n, "spread": spread, "ttl": ttl}
                    for plan, timed in runs.items():
                        row[plan] = statistics.median(r["seconds"] for r in timed)
                        row[f"{plan}_first"] = statistics.median(r["first_batch"] for r in timed)
                        row[f"{plan}_fetched"] = timed[-1]["rows_fetched"]
                    row["chosen"] = runs["auto"][-1]["chosen"]
                    row["estimates"] = runs["auto"][-1]["estimates"]
                    row["planning"] = statistics.median(r["planning"] for r in runs["auto"])
                    row["best"] = min(("pit", "fetch", "seek"), key=row.__getitem__)
                    row["load"] = os.getloadavg()[0]
                    results.append(row)
                    print(line(row), flush=True)
        for engine in engines.values():
            engine.close()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        print("\n" + table(results))
    finally:
        if not args.port:
            pg.stop()
    return 0


def line(row: dict) -> str:
    times = " ".join(f"{p}={row[p]:.3f}s" for p in PLANS)
    return (
        f"{row['entity_rows']:>9,} {row['spread']:<4} ttl={row['ttl']:<4} {times} "
        f"chosen={row['chosen']} best={row['best']} load={row['load']:.1f}"
    )


def table(results: list[dict]) -> str:
    lines = [
        "| entity rows | entity ts | TTL | A pit (s) | B fetch (s) | B seek (s) | auto (s) | "
        "chosen | best | A first batch (s) | rows read by A / B / seek |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['entity_rows']:,} | {r['spread']} | {r['ttl']} | {r['pit']:.3f} | "
            f"{r['fetch']:.3f} | {r['seek']:.3f} | {r['auto']:.3f} | {r['chosen']} | "
            f"{r['best']} | {r['pit_first']:.3f} | {r['pit_fetched']:,} / "
            f"{r['fetch_fetched']:,} / {r['seek_fetched']:,} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
