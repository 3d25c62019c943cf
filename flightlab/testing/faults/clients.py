"""Drills 3 and 4: clients SIGKILLed at every stage of a call (each a child
process that says when it got there), and a soak of mixed requests from
several threads while the server's RSS is sampled."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from statistics import median
from typing import Any

import pyarrow as pa
from feast.errors import FeatureViewNotFoundException

from flightlab.client.transport import OfflineFlightClient
from flightlab.errors import UnknownFeatureError
from flightlab.testing.faults.rows import SOAK_MARKERS, Markers, marked_rows
from flightlab.testing.faults.servers import good_request_answers, pull_request, stats, write
from flightlab.testing.processes import ServerProcess
from flightlab.testing.sample_repo import entity_frame
from flightlab.wire import protocol

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
        staged_before = stats(server.location)["staged_commands"]
        clients[how] = _kill_client_at(server.location, how, rows)
        if how == "after_staging":
            # Read before the TTL passes: the command must be there.
            staged_by_the_client = stats(server.location)["staged_commands"] - staged_before
    deadline = time.monotonic() + staged_ttl + 60
    while stats(server.location)["staged_commands"] and time.monotonic() < deadline:
        time.sleep(0.5)
    staged_after = stats(server.location)["staged_commands"]
    answered = good_request_answers(server.location)
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


def _soak_calls(markers: Markers) -> list[tuple[Callable[[OfflineFlightClient], Any], Any]]:
    """(call, expected exception class or None) pairs, cycled through."""
    entities = pa.Table.from_pandas(entity_frame(50, seed=31))
    refs = (
        "driver_stats:conv_rate",
        "customer_stats:avg_rating",
        "conv_rate_plus_val:conv_rate_plus_val",
    )
    pull = pull_request()
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
