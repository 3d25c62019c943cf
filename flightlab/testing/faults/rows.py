"""The rows a fault drill writes and how it accounts for them.

Written rows carry a marker (in avg_daily_trips) from a range of the drill's
own, so that a drill accounts for each of its rows exactly, even in a repo
other drills and tests write to: every acknowledged row present once, the
file grown by the drill's rows and nothing else.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flightlab.storage import parquet_writes
from flightlab.testing.sample_repo import DAYS, DRIVER_IDS, START

# Markers of written rows live in avg_daily_trips, far above the sample's values.

MARKER_SPAN = 10**9
SIGKILL_MARKERS = 1 * MARKER_SPAN
SERVERS_MARKERS = 2 * MARKER_SPAN
SOAK_MARKERS = 3 * MARKER_SPAN
TEST_MARKERS = 4 * MARKER_SPAN  # for tests that write marked rows themselves
SOURCE = "driver_stats.parquet"


def marked_rows(first_marker: int, n: int) -> pa.Table:
    """Driver stats rows in the source's column order; avg_daily_trips holds a
    unique marker per row, so each acknowledged row can be found again."""
    at = START + timedelta(days=DAYS, hours=1)
    ts = pa.array(np.full(n, np.datetime64(at.replace(tzinfo=None), "us")), pa.timestamp("us"))
    ts = ts.cast(pa.timestamp("us", tz="UTC"))
    return pa.table(
        {
            "driver_id": pa.array(np.resize(np.array(DRIVER_IDS, "int64"), n)),
            "event_timestamp": ts,
            "conv_rate": pa.array(np.full(n, 0.5, "float32")),
            "acc_rate": pa.array(np.full(n, 0.25, "float32")),
            "avg_daily_trips": pa.array(np.arange(first_marker, first_marker + n, dtype="int64")),
            "created": ts,
        }
    )


def grow_source(repo: Path, rows: int) -> Path:
    """Make the repo's driver stats source ``rows`` rows long (same schema)."""
    path = repo / "data" / SOURCE
    old = pq.read_table(path)
    if rows > old.num_rows:
        extra = marked_rows(0, rows - old.num_rows).cast(old.schema)
        pq.write_table(pa.concat_tables([old, extra]), path)
    return path


def read_snapshot(path: Path, with_duckdb: bool = False) -> int:
    """Read the whole file as a reader does; return its rows.

    Through one open handle (pyarrow), or by path with duckdb, as Feast's duckdb
    store reads it: duckdb opens the path more than once during a scan, so it
    reads inside parquet_writes.reading, as flightlab's servers do.
    """
    if with_duckdb:
        import duckdb

        with duckdb.connect() as connection, parquet_writes.reading([path]):
            query = "SELECT count(*), sum(avg_daily_trips) FROM read_parquet(?)"
            return connection.execute(query, [str(path)]).fetchone()[0]
    with open(path, "rb") as handle:
        return pq.read_table(handle).num_rows


def markers_in(path: Path, first: int) -> np.ndarray:
    """The file's markers from ``first`` to the end of its drill's range,
    repeats included."""
    end = (first // MARKER_SPAN + 1) * MARKER_SPAN
    column = pq.read_table(path, columns=["avg_daily_trips"]).column(0).to_numpy()
    return column[(column >= first) & (column < end)]


def first_free_marker(path: Path, base: int) -> int:
    """Where a drill's markers start: past any a previous run in this repo left."""
    used = markers_in(path, base)
    return int(used.max()) + 1 if len(used) else base


def row_accounting(
    path: Path, first: int, rows_before: int, acked: set[int], in_flight_rows: int
) -> dict[str, Any]:
    """Account for every row of a drill that wrote markers from ``first`` on.

    Acknowledged rows are all present, once each; the file grew by the drill's
    rows and nothing else; rows present without an acknowledgement number at
    most ``in_flight_rows`` (writes cut short by a kill or an error, which may
    or may not have landed).
    """
    markers = markers_in(path, first)
    present = set(markers.tolist())
    rows_after = pq.ParquetFile(path).metadata.num_rows
    counts = {
        "rows_before": rows_before,
        "rows_after": rows_after,
        "drill_rows": len(markers),
        "lost": len(acked - present),
        "duplicate_rows": len(markers) - len(present),
        "other_rows_changed": rows_after - rows_before - len(markers),
        "unacknowledged_rows_present": len(present - acked),
    }
    counts["rows_add_up"] = (
        counts["lost"] == 0
        and counts["duplicate_rows"] == 0
        and counts["other_rows_changed"] == 0
        and counts["unacknowledged_rows_present"] <= in_flight_rows
    )
    return counts


class Markers:
    """Hands out unique marker ranges to concurrent writers, from ``first`` on."""

    def __init__(self, first: int) -> None:
        self._next = first
        self._lock = threading.Lock()

    def take(self, n: int) -> int:
        with self._lock:
            first, self._next = self._next, self._next + n
            return first
