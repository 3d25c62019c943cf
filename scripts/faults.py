"""The fault suite at full size, with a printed report.

    .venv/bin/python scripts/faults.py            # full size (~15-25 min)
    .venv/bin/python scripts/faults.py --quick    # about CI size
    .venv/bin/python scripts/faults.py --only engine   # the engine drills alone (~5 min)

Runs the drills of flightlab/testing/faults/ against real `flightlab
serve_offline` processes on fresh sample repos: SIGKILL during writes to a
3M-row source (half the kills aimed inside a rewrite; at least one must land
there), three servers writing to one source under a polling reader (the rows
must add up exactly), clients SIGKILLed at each stage of a call, a
1,000-request soak, hostile inputs (each cap's refusal naming its option).
The engine drills run 10M entity rows on a 10M-row source against a server
whose joins spill (``--engine-memory-limit``): a client killed, and one
closing its stream, halfway through (seconds until the spill folder, the
open database and the server's RSS are back), two such requests at once
(peak RSS against twice the limit), and a spill over ``--spill-max-size``
(the named error; the server clean and serving after).
Prints what each drill measured, then the checks; exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from flightlab.testing.faults import (
    concurrent_servers,
    drill_options,
    dying_clients,
    hostile_inputs,
    server_process,
    sigkill_during_writes,
    soak,
)
from flightlab.testing.faults import engine as engine_drills
from flightlab.testing.faults.large import create_large_repo
from flightlab.testing.sample_repo import create_sample_repo

FULL = {
    "kill": {"source_rows": 3_000_000, "trials": 10, "rows_per_write": 2000},
    "servers": {"servers": 3, "clients_per_server": 3, "writes_per_client": 15},
    "servers_source_rows": 200_000,
    "soak": {"requests": 1000, "threads": 4},
    "hostile": {"entity_rows": 5_000_000, "string_bytes": 100 * 1024**2, "refs": 10_000},
    "caps": {"max_entity_rows": 1_000_000, "max_param_bytes": 4 * 1024**2},
    "engine": {
        "source_rows": 10_000_000,
        "rows": 10_000_000,
        "limit_mb": 512,
        "cap": "64MB",
        "cap_limit_mb": 1024,
    },
    "engine_options": [],
}
QUICK = {
    "kill": {"source_rows": 100_000, "trials": 2, "rows_per_write": 500},
    "servers": {"servers": 3, "clients_per_server": 2, "writes_per_client": 3},
    "servers_source_rows": 0,
    "soak": {"requests": 100, "threads": 4},
    "hostile": {"entity_rows": 60_000, "string_bytes": 8 * 1024**2, "refs": 10_000},
    "caps": {"max_entity_rows": 50_000, "max_param_bytes": 1024**2},
    "engine": {
        "source_rows": 200_000,
        "rows": 200_000,
        "limit_mb": 16,
        "cap": "1MB",
        "cap_limit_mb": 48,
    },
    # One thread: two need more than 16 MB; 1,000-row batches: 3 are a few of 200,000 rows.
    "engine_options": ["--engine-threads", "1", "--batch-rows", "1000"],
}
# Seconds within which a client gone mid-stream must have freed everything.
FREED_WITHIN = 10.0
FREED = (
    ("spill folder gone", "seconds_to_spill_gone"),
    ("no open database", "seconds_to_no_open_database"),
    ("server RSS back", "seconds_to_rss_back"),
)
_RESOURCE_ERROR = "ResourceExhaustedError"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="run at about CI size")
    parser.add_argument(
        "--only", choices=["drills", "engine"], help="run only the classic drills or the engine's"
    )
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    checks: list[tuple[str, bool]] = []
    with tempfile.TemporaryDirectory(prefix="flightlab-faults-") as folder:
        if args.only != "engine":
            checks += _classic_drills(Path(folder), size)
        if args.only != "drills":
            checks += _engine_drills(Path(folder), size["engine"], size["engine_options"])
    print("\n== checks ==")
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    failed = [name for name, ok in checks if not ok]
    print(f"\n{len(checks) - len(failed)}/{len(checks)} checks passed")
    return 1 if failed else 0


def _classic_drills(folder: Path, size: dict) -> list[tuple[str, bool]]:
    checks: list[tuple[str, bool]] = []
    drills = create_sample_repo(folder / "drills", "duckdb")
    writes = create_sample_repo(folder / "writes", "duckdb")
    kills = create_sample_repo(folder / "kills", "duckdb")

    kill = _timed("SIGKILL during writes", sigkill_during_writes, kills, **size["kill"])
    checks += [
        ("kill: source readable after every kill", kill["unreadable"] == 0),
        ("kill: no acknowledged row lost", kill["lost"] == 0 and kill["acknowledged_rows"] > 0),
        ("kill: rows add up (each once, nothing else changed)", kill["rows_add_up"]),
        ("kill: at least one kill inside a rewrite", kill["kills_mid_rewrite"] >= 1),
    ]
    many = _timed(
        "servers on one repo",
        concurrent_servers,
        writes,
        source_rows=size["servers_source_rows"],
        **size["servers"],
    )
    checks += [
        ("servers: no write error", not many["write_errors"]),
        ("servers: no acknowledged row lost", many["lost"] == 0),
        (
            "servers: rows after = rows before + acknowledged",
            many["rows_after"] == many["rows_before"] + many["acknowledged_rows"]
            and many["rows_add_up"],
        ),
        ("servers: every poll read the file", many["reads_failed"] == 0),
        ("servers: every pull through a server ran", many["remote_pulls_failed"] == 0),
    ]
    options = drill_options(staged_ttl=3.0, **size["caps"])
    with server_process(drills, *options) as server:
        dying = _timed("dying clients", dying_clients, server, staged_ttl=3.0)
        checks += [
            ("dying: each client SIGKILLed at its stage", dying["killed_at_their_stage"]),
            (
                "dying: the client killed after staging had staged",
                dying["staged_by_the_client_killed_after_staging"] >= 1,
            ),
            ("dying: nothing staged afterwards", dying["staged_after_ttl"] == 0),
            ("dying: server answers", dying["server_answers"]),
        ]
    with server_process(drills, *options) as server:
        soaked = _timed("soak", soak, server, **size["soak"])
        checks += [
            ("soak: 0 unexpected errors", not soaked["unexpected_errors"]),
            ("soak: RSS last quarter within 10% of first", abs(soaked["rss_change"]) <= 0.10),
        ]
    with server_process(drills, *options) as server:
        hostile = _timed("hostile inputs", hostile_inputs, server, **size["hostile"])
        refused = all(o.startswith("refused") for o in hostile["outcomes"].values())
        checks += [
            ("hostile: each refused with a named error", refused),
            ("hostile: each cap's refusal names its option", _caps_named(hostile)),
            ("hostile: server still serving", hostile["server_answers"]),
            ("hostile: RSS back within 10%", abs(hostile["rss_change"]) <= 0.10),
        ]
    return checks


def _engine_drills(folder: Path, size: dict, extra: list[str]) -> list[tuple[str, bool]]:
    print(f"\n== engine: a repo of {size['source_rows']:,} source rows ==", flush=True)
    repo = create_large_repo(folder / "large", size["source_rows"])
    spill, rows, limit_mb = folder / "spill", size["rows"], size["limit_mb"]
    options = ["--engine-memory-limit", f"{limit_mb}MB", "--spill-dir", str(spill)]
    options += ["--max-entity-rows", str(2 * rows), "--log-level", "warning", *extra]
    checks: list[tuple[str, bool]] = []
    with server_process(repo, *options) as server:
        for how in ("kill", "close"):
            gone = _timed(
                f"engine: client {how} halfway through {rows:,} rows",
                engine_drills.client_gone_midstream,
                *(server, repo, spill, rows),
                how=how,
                timeout=120,
            )
            checks += [
                (f"engine {how}: the client read batches first", gone["client"].startswith("read")),
                (f"engine {how}: the join spilled", gone["spilled_folders"] >= 1),
            ]
            checks += [
                (f"engine {how}: {what} within {FREED_WITHIN:g} s", _within(gone[key]))
                for what, key in FREED
            ]
        both = _timed(
            f"engine: two requests of {rows:,} rows at once",
            engine_drills.concurrent_requests,
            *(server, repo, spill, rows),
        )
        growth = both["rss_peak_mb"] - both["rss_before_mb"]
        print(f"peak RSS growth {growth:.0f} MB = {growth / (2 * limit_mb):.2f} x (2 x limit)")
        checks += [
            ("engine two: both answered in full", both["rows_answered"] == [rows, rows]),
            ("engine two: both spilled", both["spilled_folders"] >= 2),
            ("engine two: the server was not killed", both["server_running"]),
        ]
    # A limit a small request fits in: the server must answer one after the failure.
    capped = ["--engine-memory-limit", f"{size['cap_limit_mb']}MB", "--spill-max-size", size["cap"]]
    with server_process(repo, *options, *capped) as server:
        capped = _timed(
            f"engine: {rows:,} rows over --spill-max-size {size['cap']}",
            engine_drills.spill_over_its_cap,
            *(server, repo, spill, rows),
        )
        message = capped["message"] or ""
        checks += [
            ("engine cap: a ResourceExhaustedError", capped["error_class"] == _RESOURCE_ERROR),
            ("engine cap: names the folder", f"spill folder {spill} is full" in message),
            ("engine cap: spill folder gone", capped["seconds_to_spill_gone"] is not None),
            ("engine cap: no open database", capped["open_databases_after"] == 0),
            ("engine cap: the server answers after", capped["small_request_rows_after"] == 1000),
        ]
    return checks


def _within(seconds: float | None) -> bool:
    return seconds is not None and seconds <= FREED_WITHIN


def _caps_named(hostile: dict) -> bool:
    outcomes = hostile["outcomes"]
    return (
        "--max-entity-rows" in outcomes["entity_frame_over_the_cap"]
        and "--max-param-bytes" in outcomes["huge_string"]
        and "--max-param-bytes" in outcomes["huge_feature_reference"]
    )


def _timed(title: str, drill, *args, **kwargs) -> dict:
    print(f"\n== {title} ==", flush=True)
    started = time.perf_counter()
    result = drill(*args, **kwargs)
    result = {**result, "drill_seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(result, indent=2, default=_rounded), flush=True)
    return result


def _rounded(value):
    return round(value, 3) if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(main())
