"""Fault drills against real `flightlab serve_offline` processes, at any size.

Each drill returns a result dict of what it measured; ``tests/test_faults.py``
runs them small and asserts, ``scripts/faults.py`` runs them at full size and
prints a report. Servers and dying clients are subprocesses, so they can be
SIGKILLed (a client once it says it reached its stage) and a server's RSS read
from /proc.

Written rows carry a marker (in avg_daily_trips) from a range of the drill's
own, so that a drill accounts for each of its rows exactly, even in a repo
other drills and tests write to: every acknowledged row present once, the
file grown by the drill's rows and nothing else.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
from feast.errors import FeatureViewNotFoundException

from flightlab.client.transport import OfflineFlightClient
from flightlab.errors import (
    ResourceExhaustedError,
    UnknownFeatureError,
)
from flightlab.storage import parquet_writes
from flightlab.testing.processes import ServerProcess, running_servers, serve_offline_command
from flightlab.testing.sample_repo import CUSTOMER_IDS, DAYS, DRIVER_IDS, START, entity_frame
from flightlab.wire import protocol
from flightlab.wire.actions import ACTION_DROP
from flightlab.wire.headers import OWNER_HEADER

# Markers of written rows live in avg_daily_trips, far above the sample's values.
# Each drill writes in a range of its own: in a repo several drills share,
# rows one left behind can neither hide a row another lost nor count as its own.
MARKER_SPAN = 10**9
SIGKILL_MARKERS = 1 * MARKER_SPAN
SERVERS_MARKERS = 2 * MARKER_SPAN
SOAK_MARKERS = 3 * MARKER_SPAN
TEST_MARKERS = 4 * MARKER_SPAN  # for tests that write marked rows themselves
SOURCE = "driver_stats.parquet"


# --- a server process ---------------------------------------------------------------------


@contextmanager
def server_process(repo: Path, *options: str, log: Path | None = None) -> Iterator[ServerProcess]:
    """`python -m flightlab -c REPO serve_offline --port 0 OPTIONS`, until its serving line."""
    with server_processes(repo, 1, *options, log=log) as [server]:
        yield server


@contextmanager
def server_processes(
    repo: Path, n: int, *options: str, log: Path | None = None
) -> Iterator[list[ServerProcess]]:
    """``n`` servers of one repo, started side by side; all stopped at the end."""
    command = serve_offline_command(repo, "--log-level", "warning", *options)
    with running_servers([command] * n, log=log, stop_timeout=30) as servers:
        yield servers


# --- data ----------------------------------------------------------------------------------


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


def write(client: OfflineFlightClient, table: pa.Table) -> None:
    client.run_action(protocol.OfflineWriteBatch(feature_view_name="driver_stats", table=table))


# --- 1. SIGKILL during writes --------------------------------------------------------------


def sigkill_during_writes(
    repo: Path,
    source_rows: int,
    trials: int,
    rows_per_write: int = 1000,
    seed: int = 5,
    aimed_trials: int | None = None,
) -> dict[str, Any]:
    """Kill the server during a write loop, ``trials`` times; after each kill
    the source must be readable and hold every acknowledged row.

    Most kills fall at a random moment; ``aimed_trials`` of them (half by
    default) wait for a rewrite to be under way first, so that some kill lands
    inside one however short the rewrite. A temporary file left behind by the
    kill tells that it did (``kills_mid_rewrite``).
    """
    path = grow_source(repo, source_rows)
    rows_before = pq.ParquetFile(path).metadata.num_rows
    rng = random.Random(seed)
    first = first_free_marker(path, SIGKILL_MARKERS)
    markers = Markers(first)
    acked: set[int] = set()
    lost: set[int] = set()
    unreadable = mid_rewrite = 0
    aimed = trials // 2 if aimed_trials is None else aimed_trials
    for trial in range(trials):
        delay = rng.uniform(0.5, 3.0)
        with server_process(repo) as server:
            mid_rewrite += _kill_during_writes(
                server, path, markers, acked, rows_per_write, delay, aim=trial >= trials - aimed
            )
        try:
            lost |= acked - set(markers_in(path, first).tolist())
        except Exception:
            unreadable += 1
    try:
        # A write cut short by each kill may have landed without an acknowledgement.
        in_flight = trials * rows_per_write
        counts = row_accounting(path, first, rows_before, acked, in_flight)
    except Exception as exc:  # the file is unreadable: counted above
        counts = {"rows_add_up": False, "accounting_error": repr(exc)[:200]}
    return {
        "trials": trials,
        "aimed_trials": aimed,
        "source_rows": source_rows,
        "acknowledged_rows": len(acked),
        "kills_mid_rewrite": mid_rewrite,
        "unreadable": unreadable,
        **counts,
        "lost": len(lost),  # after any of the kills
    }


def _kill_during_writes(
    server: ServerProcess,
    path: Path,
    markers: Markers,
    acked: set[int],
    rows_per_write: int,
    delay: float,
    aim: bool,
) -> bool:
    """Write in a loop through ``server``, SIGKILL it after ``delay`` (and, with
    ``aim``, once a rewrite's temporary file exists); return whether the kill
    fell inside a rewrite."""
    stop = threading.Event()

    def loop() -> None:
        with OfflineFlightClient(server.location, timeout=120) as client:
            while not stop.is_set():
                first = markers.take(rows_per_write)
                try:
                    write(client, marked_rows(first, rows_per_write))
                except Exception:
                    return  # the server died under this write: not acknowledged
                acked.update(range(first, first + rows_per_write))

    writer = threading.Thread(target=loop)
    writer.start()
    time.sleep(delay)
    deadline = time.monotonic() + 60
    while aim and not _temp_files(path) and time.monotonic() < deadline:
        time.sleep(0.001)
    server.kill()
    # A temporary file left behind: the kill fell inside a rewrite (the next
    # writer removes it).
    inside = bool(_temp_files(path))
    stop.set()
    writer.join(60)
    return inside


def _temp_files(path: Path) -> list[Path]:
    return list(path.parent.glob(f".{path.name}.*.tmp.parquet"))


# --- 2. several servers on one repo ----------------------------------------------------------


def concurrent_servers(
    repo: Path,
    servers: int = 3,
    clients_per_server: int = 2,
    writes_per_client: int = 10,
    rows_per_write: int = 500,
    source_rows: int = 0,
) -> dict[str, Any]:
    """Writers through several server processes at once, a reader polling the file."""
    path = grow_source(repo, source_rows)
    rows_before = pq.ParquetFile(path).metadata.num_rows
    first = first_free_marker(path, SERVERS_MARKERS)
    markers, acked, errors = Markers(first), set(), []
    reads = {"ok": 0, "failed": 0}
    read_errors: list[str] = []
    done = threading.Event()

    def poll() -> None:
        turn = 0
        while not done.is_set():
            turn += 1
            try:
                read_snapshot(path, with_duckdb=turn % 2 == 0)
                reads["ok"] += 1
            except Exception as exc:
                reads["failed"] += 1
                read_errors.append(f"{'duckdb' if turn % 2 == 0 else 'pyarrow'}: {exc!r}"[:300])
            time.sleep(0.02)

    def writer(location: str) -> None:
        with OfflineFlightClient(location, timeout=300) as client:
            for _ in range(writes_per_client):
                first = markers.take(rows_per_write)
                try:
                    write(client, marked_rows(first, rows_per_write))
                except Exception as exc:
                    errors.append(repr(exc)[:200])
                    continue
                acked.update(range(first, first + rows_per_write))

    remote = {"ok": 0, "failed": 0}

    def pull_through(location: str) -> None:
        # A retrieval through a server while the others write the same file.
        with OfflineFlightClient(location, timeout=300) as client:
            while not done.is_set():
                try:
                    client.fetch(_pull_request())
                    remote["ok"] += 1
                    time.sleep(0.05)
                except Exception as exc:
                    remote["failed"] += 1
                    read_errors.append(f"remote pull: {exc!r}"[:300])

    with server_processes(repo, servers) as running:
        reader = threading.Thread(target=poll)
        reader.start()
        puller = threading.Thread(target=pull_through, args=(running[0].location,))
        puller.start()
        started = time.perf_counter()
        with ThreadPoolExecutor(servers * clients_per_server) as pool:
            locations = [s.location for s in running for _ in range(clients_per_server)]
            list(pool.map(writer, locations))
        seconds = time.perf_counter() - started
        done.set()
        reader.join()
        puller.join()
    # A write that failed may still have landed: it counts as in flight.
    in_flight = len(errors) * rows_per_write
    counts = row_accounting(path, first, rows_before, acked, in_flight)
    return {
        "servers": servers,
        "writers": servers * clients_per_server,
        "writes": servers * clients_per_server * writes_per_client,
        "acknowledged_rows": len(acked),
        "write_errors": errors,
        **counts,
        "reads_ok": reads["ok"],
        "reads_failed": reads["failed"],
        "remote_pulls_ok": remote["ok"],
        "remote_pulls_failed": remote["failed"],
        "read_errors": read_errors[:3],
        "seconds": seconds,
    }


# --- 3. dying clients --------------------------------------------------------------------------

_DYING_CLIENT = r"""
import sys, time
import pyarrow as pa, pyarrow.flight as flight
from flightlab.client.transport import OfflineFlightClient
from flightlab.testing.sample_repo import entity_frame
from flightlab.wire import protocol

location, how, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
request = protocol.GetHistoricalFeatures(
    features=("driver_stats:conv_rate",),
    entity_df=pa.Table.from_pandas(entity_frame(rows, seed=8)),
)
client = OfflineFlightClient(location, timeout=60, upload_batch_rows=1000)

def reached(stage):
    # The drill SIGKILLs this process once it has read this line.
    print(stage, flush=True)
    time.sleep(600)

if how == "after_staging":
    reached("staged " + client.stage(request))
elif how == "mid_upload":
    raw = flight.FlightClient(location)
    table = request.entity_df
    command = protocol.new_command_id()
    put = protocol.put_metadata(command, request.api, "entity_df")
    meta = {**(table.schema.metadata or {}), **put}
    schema = table.schema.with_metadata(meta)
    batches = table.to_batches(max_chunksize=1000)
    writer, _ = raw.do_put(protocol.command_descriptor(command), schema)
    writer.write_batch(batches[0].replace_schema_metadata(meta))
    reached(f"uploading: sent 1 of {len(batches)} batches")
elif how == "never_reading":
    with client.open_reader(request):
        reached("opened the result")
elif how == "mid_download":
    with client.open_reader(request) as reader:
        reached(f"downloading: read {reader.read_chunk().data.num_rows} of {rows} rows")
"""
# What each dying client prints once it has reached the stage it dies at.
_DYING_STAGES = {
    "after_staging": "staged ",
    "mid_upload": "uploading: ",
    "mid_download": "downloading: ",
    "never_reading": "opened the result",
}


def dying_clients(server: ServerProcess, rows: int = 20_000, staged_ttl: float = 3.0) -> dict:
    """Clients SIGKILLed at every stage of a call, each once it says it got
    there; afterwards nothing stays staged (once the TTL has passed) and the
    server still answers correctly."""
    clients: dict[str, dict[str, Any]] = {}
    staged_by_the_client = 0
    for how in _DYING_STAGES:
        staged_before = _stats(server.location)["staged_commands"]
        clients[how] = _kill_client_at(server.location, how, rows)
        if how == "after_staging":
            # Read before the TTL passes: the command must be there.
            staged_by_the_client = _stats(server.location)["staged_commands"] - staged_before
    deadline = time.monotonic() + staged_ttl + 60
    while _stats(server.location)["staged_commands"] and time.monotonic() < deadline:
        time.sleep(0.5)
    staged_after = _stats(server.location)["staged_commands"]
    answered = _good_request_answers(server.location)
    killed_at_stage = all(
        c["exit_code"] == -signal.SIGKILL and (c["reached"] or "").startswith(_DYING_STAGES[how])
        for how, c in clients.items()
    )
    return {
        "clients": clients,
        "killed_at_their_stage": killed_at_stage,
        "staged_by_the_client_killed_after_staging": staged_by_the_client,
        "staged_after_ttl": staged_after,
        "server_answers": answered,
    }


def _kill_client_at(location: str, how: str, rows: int, timeout: float = 120) -> dict[str, Any]:
    """Start a dying client, wait for its line saying it reached its stage,
    SIGKILL it; what it said, its exit code, and its stderr if it said nothing."""
    process = subprocess.Popen(
        [sys.executable, "-c", _DYING_CLIENT, location, how, str(rows)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=30)
    reached = lines[0].strip() if lines and lines[0] else None
    outcome: dict[str, Any] = {"reached": reached, "exit_code": process.returncode}
    if reached is None:  # it crashed or hung before its stage: show why
        outcome["stderr"] = stderr[-1500:]
    return outcome


def _stats(location: str) -> dict[str, Any]:
    with OfflineFlightClient(location, timeout=30) as client:
        return client.stats()


def _good_request_answers(location: str) -> bool:
    entities = entity_frame(50, seed=21)
    request = protocol.GetHistoricalFeatures(
        features=("driver_stats:conv_rate",), entity_df=pa.Table.from_pandas(entities)
    )
    with OfflineFlightClient(location, timeout=60) as client:
        return client.fetch(request).num_rows == len(entities)


# --- 4. soak -----------------------------------------------------------------------------------


def soak(server: ServerProcess, requests: int = 1000, threads: int = 4, warmup: int = 40) -> dict:
    """Mixed requests from several threads; count unexpected errors; compare the
    server's RSS over the last quarter of requests with the first quarter."""
    markers = Markers(SOAK_MARKERS)  # the soak does not count its rows
    calls = _soak_calls(markers)
    unexpected: list[str] = []
    done = [0]
    lock = threading.Lock()
    samples: list[tuple[int, float]] = []
    with OfflineFlightClient(server.location, timeout=120) as warm:
        for i in range(warmup):
            _run_call(calls[i % len(calls)], warm, [])
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with lock:
                count = done[0]
            samples.append((count, server.rss_mb()))
            time.sleep(0.05)

    def worker(index: int) -> None:
        with OfflineFlightClient(server.location, timeout=120) as client:
            for i in range(index, requests, threads):
                _run_call(calls[i % len(calls)], client, unexpected)
                with lock:
                    done[0] += 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    quarter = requests / 4
    first = median([rss for n, rss in samples if n < quarter] or [0])
    last = median([rss for n, rss in samples if n >= 3 * quarter] or [0])
    return {
        "requests": requests,
        "threads": threads,
        "unexpected_errors": unexpected,
        "rss_first_quarter_mb": first,
        "rss_last_quarter_mb": last,
        "rss_change": (last - first) / first if first else float("nan"),
        "seconds": seconds,
    }


def _pull_request() -> protocol.PullLatestFromTableOrQuery:
    return protocol.PullLatestFromTableOrQuery(
        data_source_name="driver_stats_source",
        join_key_columns=("driver_id",),
        feature_name_columns=("conv_rate", "acc_rate"),
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
        start_date=START,
        end_date=START + timedelta(days=DAYS + 1),
    )


def _soak_calls(markers: Markers) -> list[tuple[Callable[[OfflineFlightClient], Any], Any]]:
    """(call, expected exception class or None) pairs, cycled through."""
    entities = pa.Table.from_pandas(entity_frame(50, seed=31))
    refs = (
        "driver_stats:conv_rate",
        "customer_stats:avg_rating",
        "conv_rate_plus_val:conv_rate_plus_val",
    )
    pull = _pull_request()
    return [
        (
            lambda c: c.fetch(protocol.GetHistoricalFeatures(features=refs, entity_df=entities)),
            None,
        ),
        (lambda c: c.fetch(pull), None),
        (lambda c: write(c, marked_rows(markers.take(5), 5)), None),
        (
            lambda c: c.fetch(
                protocol.GetHistoricalFeatures(features=("nope:x",), entity_df=entities)
            ),
            FeatureViewNotFoundException,
        ),
        (
            lambda c: c.fetch(
                protocol.GetHistoricalFeatures(features=("driver_stats:nope",), entity_df=entities)
            ),
            UnknownFeatureError,
        ),
    ]


def _run_call(call: tuple[Callable, Any], client: OfflineFlightClient, unexpected: list) -> None:
    run, expected = call
    try:
        run(client)
    except Exception as exc:
        if expected is None or not isinstance(exc, expected):
            unexpected.append(f"{type(exc).__name__}: {str(exc)[:200]}")
        return
    if expected is not None:
        unexpected.append(f"no {expected.__name__} raised")


# --- 5. hostile inputs -----------------------------------------------------------------------


def drill_options(
    staged_ttl: float = 3.0, max_entity_rows: int = 1_000_000, max_param_bytes: int = 4 * 1024**2
) -> tuple[str, ...]:
    """serve_offline options of the server the last three drills run against."""
    return (
        *("--staged-ttl", str(staged_ttl), "--batch-rows", "1000"),
        *("--max-entity-rows", str(max_entity_rows), "--max-param-bytes", str(max_param_bytes)),
    )


def hostile_inputs(
    server: ServerProcess,
    entity_rows: int = 5_000_000,
    string_bytes: int = 100 * 1024**2,
    refs: int = 10_000,
) -> dict[str, Any]:
    """Inputs past every cap (the server runs with drill_options), and another
    client's command id: each refused with a named error (a cap's refusal
    naming the cap's option), the server serving afterwards, its RSS back near
    where it was."""
    outcomes: dict[str, str] = {}
    with OfflineFlightClient(server.location, timeout=300) as client:
        for _ in range(5):
            _good_request_answers(server.location)
        time.sleep(1.0)
        rss_before = server.rss_mb()
        cases = {
            "entity_frame_over_the_cap": (
                lambda: client.fetch(_big_entity_request(entity_rows)),
                ResourceExhaustedError,
                "--max-entity-rows",
            ),
            "feature_references": (
                lambda: client.fetch(
                    protocol.GetHistoricalFeatures(
                        features=tuple(f"driver_stats:f{i}" for i in range(refs)),
                        entity_df=pa.Table.from_pandas(entity_frame(10)),
                    )
                ),
                UnknownFeatureError,
                None,
            ),
            "huge_string": (
                lambda: client.fetch(
                    protocol.GetHistoricalFeatures(
                        features=("driver_stats:conv_rate",), entity_df_sql="x" * string_bytes
                    )
                ),
                ResourceExhaustedError,
                "--max-param-bytes",
            ),
            "huge_feature_reference": (
                lambda: client.fetch(
                    protocol.GetHistoricalFeatures(
                        features=("driver_stats:" + "v" * string_bytes,),
                        entity_df=pa.Table.from_pandas(entity_frame(10)),
                    )
                ),
                ResourceExhaustedError,
                "--max-param-bytes",
            ),
        }
        for name, (run, expected, option) in cases.items():
            outcomes[name] = _outcome(run, expected, option)
            outcomes[name] += "" if _good_request_answers(server.location) else " NOT SERVING"
        outcomes["another_clients_command"] = _stranger_case(server.location)
    time.sleep(2.0)  # the server releases memory shortly after a large request
    rss_after = server.rss_mb()
    serving = _good_request_answers(server.location)
    return {
        "outcomes": outcomes,
        "server_answers": serving,
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "rss_change": (rss_after - rss_before) / rss_before,
    }


def _big_entity_request(rows: int) -> protocol.GetHistoricalFeatures:
    rng = np.random.default_rng(4)
    seconds = rng.integers(0, DAYS * 86400, rows)
    start = np.datetime64(START.replace(tzinfo=None), "s")
    timestamps = pa.array(start + seconds.astype("timedelta64[s]")).cast(pa.timestamp("us", "UTC"))
    table = pa.table(
        {
            "driver_id": pa.array(rng.choice(DRIVER_IDS, rows).astype("int64")),
            "customer_id": pa.array(rng.choice(CUSTOMER_IDS, rows).astype("int64")),
            "event_timestamp": timestamps,
        }
    )
    return protocol.GetHistoricalFeatures(features=("driver_stats:conv_rate",), entity_df=table)


def _outcome(run: Callable[[], Any], expected: type, names: str | None = None) -> str:
    """A verdict starting "refused" when ``run`` raises ``expected`` with a
    message naming ``names`` (a cap's option); else what went wrong."""
    try:
        run()
    except expected as exc:
        text = str(exc)
        if names is not None and names not in text:
            return f"WRONG MESSAGE, not naming {names}: {type(exc).__name__}: {text[:200]}"
        return f"refused: {type(exc).__name__}: {text[:200]}"
    except Exception as exc:
        return f"WRONG ERROR {type(exc).__name__}: {str(exc)[:200]}"
    return "WRONG: accepted"


def _stranger_case(location: str) -> str:
    """A stranger (a bare Flight client, no owner header) tries another's command."""
    entities = entity_frame(20, seed=12)
    request = protocol.GetHistoricalFeatures(
        features=("driver_stats:conv_rate",), entity_df=pa.Table.from_pandas(entities)
    )
    secret = flight.FlightCallOptions(headers=[(OWNER_HEADER.encode(), b"the-owner")])
    with OfflineFlightClient(location, timeout=60, owner="the-owner") as owner:
        command_id = owner.stage(request)
    descriptor, ticket = protocol.command_descriptor(command_id), protocol.ticket_bytes(command_id)
    stranger, owner_raw = flight.FlightClient(location), flight.FlightClient(location)
    try:
        seen = command_id in [i.descriptor.command.decode() for i in stranger.list_flights()]
        refused = [
            _outcome(lambda: stranger.get_flight_info(descriptor), flight.FlightServerError),
            _outcome(
                lambda: stranger.do_get(flight.Ticket(ticket)).read_all(), flight.FlightServerError
            ),
        ]
        [answer] = stranger.do_action(flight.Action(ACTION_DROP, ticket))
        dropped = answer.body.to_pybytes().decode()
        # The owner's command is untouched: listed to it, and it runs on its rows.
        listed = [i.descriptor.command.decode() for i in owner_raw.list_flights(b"", secret)]
        info = owner_raw.get_flight_info(descriptor, secret)
        rows = owner_raw.do_get(info.endpoints[0].ticket, secret).read_all().num_rows
    finally:
        stranger.close()
        owner_raw.close()
    unknown = all("UnknownCommandError" in r for r in refused)
    ok = unknown and not seen and command_id in listed and rows == len(entities)
    verdict = "refused: UnknownCommandError" if ok else f"WRONG {refused}"
    return f"{verdict} (listed to the stranger: {seen}, its drop: {dropped}, owner got {rows} rows)"


__all__ = [
    "concurrent_servers",
    "dying_clients",
    "hostile_inputs",
    "sigkill_during_writes",
    "soak",
]
