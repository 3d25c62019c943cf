"""A Spark repo whose result outgrows its driver, for the large-result test and benchmark.

``create_large_spark_repo`` writes the sample Spark repo (Feast's spark store,
local mode) with a small ``spark.driver.memory`` and ``rows`` rows of
``driver_stats`` (40 bytes a row in Arrow: a ``pull_all`` over the whole span
returns every one of them). ``local_pull_in_child`` runs Feast's local
``to_arrow`` on it in a child process (its own JVM, with that driver memory),
and ``remote_pull`` reads the same pull through a server, batch by batch,
keeping only counts: both say how many rows they got and the sum of
``avg_daily_trips``, which ``expected_totals`` knows from the data.
"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flightlab.testing.backend_repos import create_spark_repo
from flightlab.testing.processes import feast_apply
from flightlab.testing.sample_repo import DAYS, DRIVER_IDS, START

ROW_BYTES = 40  # driver_id, event_timestamp, created (8 each), two float32, one int64
_CHUNK_ROWS = 1_000_000
_SEED = 17


def create_large_spark_repo(
    path: str | Path,
    rows: int,
    driver_memory: str = "512m",
    staging_location: str | Path | None = None,
    in_process: bool = False,
) -> Path:
    """The sample Spark repo, its driver at ``driver_memory``, ``rows`` rows of
    driver stats. ``in_process`` applies it with the SDK in this process (which
    reuses a Spark JVM already running here) instead of ``feast apply``."""
    conf = {"spark.driver.memory": driver_memory, "spark.sql.shuffle.partitions": "2"}
    repo = create_spark_repo(path, apply=False, staging_location=staging_location, spark_conf=conf)
    folder = repo / "data" / "driver_stats"
    for old in folder.glob("*.parquet"):
        old.unlink()
    with pq.ParquetWriter(folder / "part-0.parquet", _schema()) as writer:
        for start in range(0, rows, _CHUNK_ROWS):
            writer.write_table(_chunk(start, min(_CHUNK_ROWS, rows - start)))
    if in_process:
        apply_in_process(repo)
    else:
        feast_apply(repo)
    return repo


def apply_in_process(repo: Path) -> None:
    """What ``feast apply`` registers, applied with ``FeatureStore.apply``: the
    definitions run as a script (no module cache shared between repos)."""
    from feast import Entity, FeatureService, FeatureStore, FeatureView, OnDemandFeatureView
    from feast.data_source import DataSource

    kinds = (Entity, FeatureView, OnDemandFeatureView, FeatureService, DataSource)
    names = runpy.run_path(str(repo / "definitions.py"))
    FeatureStore(repo_path=str(repo)).apply([v for v in names.values() if isinstance(v, kinds)])


def _schema() -> pa.Schema:
    return pa.schema(
        [
            ("driver_id", pa.int64()),
            ("event_timestamp", pa.timestamp("us", tz="UTC")),
            ("conv_rate", pa.float32()),
            ("acc_rate", pa.float32()),
            ("avg_daily_trips", pa.int64()),
            ("created", pa.timestamp("us", tz="UTC")),
        ]
    )


def _chunk(start: int, rows: int) -> pa.Table:
    rng = np.random.default_rng(_SEED + start)
    span_us = DAYS * 24 * 3600 * 1_000_000 - 120_000_000  # all within the pull's window
    begin = int(START.timestamp() * 1_000_000) + 60_000_000
    times = begin + rng.integers(0, span_us, rows)
    return pa.table(
        {
            "driver_id": rng.choice(DRIVER_IDS, rows).astype("int64"),
            "event_timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
            "conv_rate": rng.random(rows, dtype="float32"),
            "acc_rate": rng.random(rows, dtype="float32"),
            "avg_daily_trips": _trips(start, rows),
            "created": pa.array(times + 60_000_000, pa.timestamp("us", tz="UTC")),
        },
        schema=_schema(),
    )


def _trips(start: int, rows: int) -> np.ndarray:
    return (np.arange(start, start + rows, dtype="int64") % 1000).astype("int64")


def expected_totals(rows: int) -> tuple[int, int]:
    """(rows, sum of avg_daily_trips) a whole pull returns."""
    return rows, int(
        sum(int(_trips(s, min(_CHUNK_ROWS, rows - s)).sum()) for s in range(0, rows, _CHUNK_ROWS))
    )


def pull_window() -> dict[str, object]:
    return {"start_date": START, "end_date": START + timedelta(days=DAYS)}


_CHILD = """
import json, sys, time
from feast import FeatureStore
from flightlab.testing.spark_large import cause_of, pull_job
store = FeatureStore(repo_path=sys.argv[1])
started = time.monotonic()
try:
    table = pull_job(store).to_arrow()
    total = int(table.column("avg_daily_trips").to_pandas().sum())
    seconds = time.monotonic() - started
    print(json.dumps({"rows": table.num_rows, "trips": total, "seconds": seconds}))
except BaseException as exc:
    print(json.dumps({"error": cause_of(exc), "seconds": time.monotonic() - started}))
"""


@dataclass
class LocalOutcome:
    """What Feast's local ``to_arrow`` did in its child process."""

    rows: int | None
    trips: int | None
    seconds: float
    error: str | None  # None: it finished; "did not finish in N s"; the exception


def local_pull_in_child(repo: Path, timeout: float) -> LocalOutcome:
    """Feast's local ``pull_all(...).to_arrow()`` on ``repo`` in a child process
    (killed after ``timeout`` seconds, its JVM with it)."""
    started = time.monotonic()
    command = [sys.executable, "-c", _CHILD, str(repo)]
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(child)
        return LocalOutcome(
            None, None, time.monotonic() - started, f"did not finish in {timeout:.0f} s"
        )
    lines = [line for line in out.decode(errors="replace").splitlines() if line.startswith("{")]
    found = json.loads(lines[-1]) if lines else {"error": f"exited {child.returncode}"}
    error = found.get("error")
    if error is not None:
        # The JVM says why on its stderr (the Python side may only see it gone).
        java = [line for line in err.decode(errors="replace").splitlines() if _JAVA_OOM in line]
        if java:
            error = f"{error} (the JVM logged: {java[0].strip()[:200]})"
    seconds = found.get("seconds", time.monotonic() - started)
    return LocalOutcome(found.get("rows"), found.get("trips"), seconds, error)


_JAVA_OOM = "java.lang.OutOfMemoryError"


def _kill_group(child: subprocess.Popen) -> None:
    import os
    import signal

    try:
        os.killpg(child.pid, signal.SIGKILL)  # the child and the JVM it started
    except ProcessLookupError:
        pass
    child.wait()


def cause_of(exc: BaseException) -> str:
    """A Spark failure in a line: the deepest "Caused by" of a Java error, else its first line."""
    text = str(exc)
    causes = [line.strip() for line in text.splitlines() if line.strip().startswith("Caused by")]
    line = causes[-1] if causes else (text.strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {line[:300]}"


def pull_job(store) -> object:
    """The pull of every driver_stats row (``pull_all_from_table_or_query``)."""
    source = store.get_data_source("driver_stats_source")
    offline = store._get_provider().offline_store
    return offline.pull_all_from_table_or_query(
        config=store.config,
        data_source=source,
        join_key_columns=["driver_id"],
        feature_name_columns=["conv_rate", "acc_rate", "avg_daily_trips"],
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
        **pull_window(),
    )


def remote_pull(store, on_batch: Callable[[pa.RecordBatch], None] | None = None) -> tuple[int, int]:
    """The same pull through a client store, read batch by batch: (rows, sum of trips)."""
    rows = trips = 0
    for batch in pull_job(store).to_arrow_batches():
        rows += batch.num_rows
        trips += int(pc.sum(batch.column("avg_daily_trips")).as_py() or 0)
        if on_batch is not None:
            on_batch(batch)
    return rows, trips
