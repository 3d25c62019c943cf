"""Engine drills: what a spilling request leaves behind when its client goes,
when another runs beside it, and when its spill folder fills.

Each works on a server in a child process (so its RSS is its own) whose
engine spills (``--engine-memory-limit`` small, ``--spill-dir`` known), and
returns what it measured; ``scripts/faults.py`` runs them at 10M entity rows
and prints them, ``tests/test_engine_faults.py`` asserts their small forms.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from flightlab.client.transport import OfflineFlightClient
from flightlab.testing.faults.large import large_request
from flightlab.testing.faults.servers import stats
from flightlab.testing.processes import ServerProcess, peak_rss, reset_peak_rss

# A client that reads a few batches of a large retrieval, says so, and waits
# to be killed (or, with "close", closes its stream and exits).
_READING_CLIENT = r"""
import sys, time
from pathlib import Path
from flightlab.client.transport import OfflineFlightClient
from flightlab.testing.faults.large import large_request

location, repo, rows, batches, how = sys.argv[1:6]
request = large_request(Path(repo), int(rows))
with OfflineFlightClient(location, timeout=3600) as client:
    stream = client.iter_batches(request)
    read = sum(next(stream).num_rows for _ in range(int(batches)))
    print(f"read {read} rows", flush=True)
    if how == "close":
        stream.close()
        print("closed", flush=True)
        sys.exit(0)
    time.sleep(3600)
"""


def request_folders(spill_root: Path) -> list[Path]:
    """The spill folders of the engine's requests under ``spill_root``."""
    return sorted(spill_root.glob("request-*")) if spill_root.exists() else []


def open_databases(location: str) -> int:
    """The engine's databases still open on the server (the ``stats`` action)."""
    return stats(location)["engine"]["open_databases"]


def seconds_until(
    predicate: Callable[[], bool], since: float, timeout: float, every: float = 0.05
) -> float | None:
    """Seconds from the monotonic time ``since`` until ``predicate`` held
    (polled), or None if it did not within ``timeout`` seconds of ``since``."""
    while not predicate():
        if time.monotonic() - since > timeout:
            return None
        time.sleep(every)
    return round(time.monotonic() - since, 2)


def client_gone_midstream(
    server: ServerProcess,
    repo: Path,
    spill_root: Path,
    rows: int,
    how: str = "kill",
    batches: int = 3,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """A client process reads ``batches`` batches of a ``rows``-row retrieval,
    then is SIGKILLed (``how="kill"``) or closes its stream (``"close"``).
    Measures how long until the request's spill folder is gone, the engine
    has no open database, and the server's RSS is back near where it began."""
    rss_before = server.rss_mb()
    reset_peak_rss(server.pid)
    spilled: set[str] = set()
    watcher = _watch(spill_root, spilled)
    process = subprocess.Popen(
        [sys.executable, "-c", _READING_CLIENT, server.location, str(repo), str(rows)]
        + [str(batches), how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    said = process.stdout.readline().strip()
    if how == "kill":
        process.kill()
    rest, stderr = process.communicate(timeout=60)
    said = " ".join([said, *rest.split()]).strip()
    gone_at = time.monotonic()
    peak_mb = (peak_rss(server.pid) or 0) / 1024**2
    spill_s = seconds_until(lambda: not request_folders(spill_root), gone_at, timeout)
    databases_s = seconds_until(lambda: open_databases(server.location) == 0, gone_at, timeout)
    # "Back": within a tenth of what the request added, or 50 MB.
    back_to = rss_before + max(50.0, 0.1 * (peak_mb - rss_before))
    rss_s = seconds_until(lambda: server.rss_mb() <= back_to, gone_at, timeout, every=0.2)
    watcher.set()
    return {
        "client": said if process.returncode in (0, -9) else f"{said} {stderr[-1500:]}",
        "client_exit_code": process.returncode,
        "spilled_folders": len(spilled),
        "rss_before_mb": rss_before,
        "rss_peak_mb": peak_mb,
        "rss_after_mb": server.rss_mb(),
        "seconds_to_spill_gone": spill_s,
        "seconds_to_no_open_database": databases_s,
        "seconds_to_rss_back": rss_s,
    }


def concurrent_requests(
    server: ServerProcess, repo: Path, spill_root: Path, rows: int, n: int = 2
) -> dict[str, Any]:
    """``n`` retrievals of ``rows`` rows at once (different entity rows), each
    read to its end: their row counts, the spill folders seen, the server's
    peak RSS and whether it survived."""
    rss_before = server.rss_mb()
    reset_peak_rss(server.pid)
    spilled: set[str] = set()
    watcher = _watch(spill_root, spilled)

    def fetch(seed: int) -> int:
        request = large_request(repo, rows, seed=seed)
        with OfflineFlightClient(server.location, timeout=3600) as client:
            return sum(batch.num_rows for batch in client.iter_batches(request))

    started = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        answered = list(pool.map(fetch, range(11, 11 + n)))
    seconds = time.perf_counter() - started
    watcher.set()
    return {
        "rows_answered": answered,
        "seconds": seconds,
        "spilled_folders": len(spilled),
        "rss_before_mb": rss_before,
        "rss_peak_mb": (peak_rss(server.pid) or 0) / 1024**2,
        "server_running": server.process.poll() is None,
    }


def spill_over_its_cap(
    server: ServerProcess, repo: Path, spill_root: Path, rows: int
) -> dict[str, Any]:
    """A retrieval on a server whose ``--spill-max-size`` it outgrows: the
    error it gets, and whether the server is clean and serving afterwards."""
    started = time.perf_counter()
    try:
        with OfflineFlightClient(server.location, timeout=3600) as client:
            client.fetch(large_request(repo, rows))
        error: BaseException | None = None
    except Exception as exc:
        error = exc
    seconds = time.perf_counter() - started
    spill_s = seconds_until(lambda: not request_folders(spill_root), time.monotonic(), 30)
    with OfflineFlightClient(server.location, timeout=600) as client:
        small = client.fetch(large_request(repo, 1000)).num_rows
    return {
        "error_class": None if error is None else type(error).__name__,
        "error_bases": [] if error is None else [c.__name__ for c in type(error).__mro__[1:4]],
        "message": None if error is None else str(error),
        "seconds_to_error": seconds,
        "seconds_to_spill_gone": spill_s,
        "open_databases_after": open_databases(server.location),
        "small_request_rows_after": small,
    }


def _watch(spill_root: Path, seen: set[str]) -> threading.Event:
    """Record in ``seen`` each request folder holding spill files, until set."""
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for folder in request_folders(spill_root):
                try:
                    if any(folder.iterdir()):
                        seen.add(folder.name)
                except FileNotFoundError:  # removed as we looked
                    pass
            done.wait(0.02)

    threading.Thread(target=watch, name="spill-watcher", daemon=True).start()
    return done
