"""Spark's result through the server, larger than Spark's driver memory (issue 21).

    .venv/bin/python benchmarks/spark.py                       # 60M rows (2.4 GB), 512m driver
    .venv/bin/python benchmarks/spark.py --rows 10M --local-cap 120   # a smaller run

A Spark repo (Feast's spark store, ``local[2]``, ``spark.driver.memory`` small)
whose ``driver_stats`` holds ``--rows`` rows; the pull of all of them
(``pull_all_from_table_or_query``, 40 bytes a row in Arrow) is read through a
``flightlab serve_offline`` child process with flightlab's client, batch by
batch, and the row count and a column's sum are checked against the data. It
prints the result's size against the driver memory, rows/s, the server's
peak RSS growth (the Python process; its Spark JVM, a child process, apart),
and the target. Then Feast's local ``to_arrow`` on the same repo, in a child
process with the same driver memory, capped at ``--local-cap`` seconds.
Results go to ``out/benchmark/spark/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from feast import FeatureStore  # noqa: E402

from flightlab.testing.backend_repos import FILE_REGISTRY_YAML, client_yaml  # noqa: E402
from flightlab.testing.processes import (  # noqa: E402
    current_rss,
    peak_rss,
    reset_peak_rss,
    running_server,
    serve_offline_command,
)
from flightlab.testing.spark_large import (  # noqa: E402
    ROW_BYTES,
    create_large_spark_repo,
    expected_totals,
    local_pull_in_child,
    remote_pull,
)

TARGET = "Spark: a result >= 4 x the driver memory goes through with server RSS growth <= 1 GB"
MB = 1024**2


def main() -> int:
    args = _arguments()
    out = Path(args.out)
    rows = _count(args.rows)
    repo = out / "work" / f"repo-{rows}-{args.driver_memory}"
    started = time.monotonic()
    if not (repo / "data" / "registry.db").exists():
        _log(f"writing {rows:,} rows of driver stats and applying the repo at {repo}")
        create_large_spark_repo(repo, rows, args.driver_memory)
        _log(f"repo ready in {time.monotonic() - started:.0f} s")
    result = {"rows": rows, "driver_memory": args.driver_memory, "row_bytes": ROW_BYTES}
    result["server"] = _through_server(repo, out, rows)
    if args.local_cap > 0:
        _log(f"Feast's local to_arrow, capped at {args.local_cap:.0f} s")
        local = local_pull_in_child(repo, args.local_cap)
        result["local"] = local.__dict__
    _report(result)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    return 0


def _through_server(repo: Path, out: Path, rows: int) -> dict[str, object]:
    log = out / "logs" / "server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    spill = out / "spill"
    command = serve_offline_command(repo, "--spill-dir", str(spill))
    with running_server(command, log=log, timeout=180) as server:
        store = _client(out / "client", repo, server.port)
        _log("warming up (the server starts Spark on its first call)")
        _warm_up(store)
        baseline = current_rss(server.pid) or 0
        reset_peak_rss(server.pid)
        jvm = _TreeSampler(server.pid)
        done = [0]
        first_batch = [0.0]
        started = time.monotonic()

        def progress(batch) -> None:
            if not done[0]:
                first_batch[0] = time.monotonic() - started  # Spark has written the files
            done[0] += batch.num_rows
            if done[0] // 5_000_000 != (done[0] - batch.num_rows) // 5_000_000:
                _log(f"  {done[0]:,} rows in {time.monotonic() - started:.0f} s")

        _log(f"reading {rows:,} rows through the server")
        with jvm:
            got_rows, trips = remote_pull(store, progress)
        seconds = time.monotonic() - started
        peak = peak_rss(server.pid) or 0
        left = sorted(p.name for p in spill.glob("spark-result-*")) if spill.exists() else []
    expected = expected_totals(rows)
    return {
        "seconds": seconds,
        "rows_per_second": got_rows / seconds,
        "first_batch_seconds": first_batch[0],
        "rows_got": got_rows,
        "correct": (got_rows, trips) == expected,
        "server_rss_growth_mb": (peak - baseline) / MB,
        "jvm_peak_rss_mb": jvm.peak_children / MB,
        "folders_left": left,
    }


def _client(folder: Path, repo: Path, port: int) -> FeatureStore:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    registry = FILE_REGISTRY_YAML.replace("data/registry.db", str(repo / "data" / "registry.db"))
    (folder / "feature_store.yaml").write_text(client_yaml(registry, port))
    return FeatureStore(repo_path=str(folder))


def _warm_up(store: FeatureStore) -> None:
    from flightlab.testing.sample_repo import START

    source = store.get_data_source("driver_stats_source")
    job = store._get_provider().offline_store.pull_latest_from_table_or_query(
        config=store.config,
        data_source=source,
        join_key_columns=["driver_id"],
        feature_name_columns=["conv_rate"],
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
        start_date=START,
        end_date=START,
    )
    job.to_arrow()


class _TreeSampler:
    """The peak RSS of a process's children (the Spark JVM), sampled every 0.2 s."""

    def __init__(self, pid: int):
        self._process = psutil.Process(pid)
        self.peak_children = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            total = 0
            for child in self._process.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_children = max(self.peak_children, total)


def _report(result: dict) -> None:
    rows, memory = result["rows"], result["driver_memory"]
    size_mb = rows * ROW_BYTES / MB
    memory_mb = _megabytes(memory)
    server = result["server"]
    ratio = size_mb / memory_mb
    print()
    print(
        f"result: {rows:,} rows, {size_mb:,.0f} MB of Arrow = {ratio:.1f} x the driver's {memory}"
    )
    print(
        f"server: {server['seconds']:.1f} s, {server['rows_per_second']:,.0f} rows/s "
        f"(first batch after {server['first_batch_seconds']:.1f} s: Spark writing the files), "
        f"rows {'all correct' if server['correct'] else 'WRONG'} ({server['rows_got']:,}); "
        f"server RSS growth {server['server_rss_growth_mb']:,.0f} MB; "
        f"its Spark JVM peaked at {server['jvm_peak_rss_mb']:,.0f} MB RSS; "
        f"result folders left: {len(server['folders_left'])}"
    )
    local = result.get("local")
    if local is not None:
        if local["error"] is None:
            print(f"Feast local to_arrow: {local['seconds']:.1f} s, {local['rows']:,} rows")
        elif local["error"].startswith("did not finish"):
            print(f"Feast local to_arrow: {local['error']}")
        else:
            print(
                f"Feast local to_arrow: failed: {local['error']} (after {local['seconds']:.0f} s)"
            )
    met = ratio >= 4 and server["correct"] and server["server_rss_growth_mb"] <= 1024
    print(f"{'MET' if met else 'MISSED'}  {TARGET}")
    result["target"] = {"label": TARGET, "met": met, "size_over_driver_memory": ratio}


def _megabytes(memory: str) -> float:
    units = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024**2}
    return float(memory[:-1]) * units[memory[-1].lower()]


def _count(text: str) -> int:
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def _log(message: str) -> None:
    print(f"[spark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="60M", help="rows of the result (default 60M: 2.4 GB)")
    parser.add_argument("--driver-memory", default="512m", help="spark.driver.memory (512m)")
    parser.add_argument(
        "--local-cap", type=float, default=300, help="seconds for Feast's local to_arrow (0: skip)"
    )
    parser.add_argument("--out", default=str(ROOT / "out" / "benchmark" / "spark"))
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
