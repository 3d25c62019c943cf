"""Drills 1 and 2: servers SIGKILLed while they write, and several servers
writing one source under a polling reader; every acknowledged row must be
there once, and nothing else changed."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from flightlab.client.transport import OfflineFlightClient
from flightlab.testing.faults.rows import (
    SERVERS_MARKERS,
    SIGKILL_MARKERS,
    Markers,
    first_free_marker,
    grow_source,
    marked_rows,
    markers_in,
    read_snapshot,
    row_accounting,
)
from flightlab.testing.faults.servers import pull_request, server_process, server_processes, write
from flightlab.testing.processes import ServerProcess

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
                    client.fetch(pull_request())
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
