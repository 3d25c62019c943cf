"""The flightlab benchmark: one command, every mode, every offline store.

    .venv/bin/python benchmarks/run.py                    # the full run (see README.md)
    .venv/bin/python benchmarks/run.py --quick            # smaller sizes, 1 repeat, no MNIST
    .venv/bin/python benchmarks/run.py --stores postgres  # one part alone

On one generated repo and data set (datagen.py), for each offline store and
each case (entity rows; the full MNIST retrieval), it times
``get_historical_features(...)`` in each of ``MODES``; then concurrent clients
on each server, a small retrieval's latency with a large one in flight, and
the raw Arrow Flight loopback ceiling. The ``postgres`` store runs on a
throwaway PostgreSQL cluster with data of its own (postgres.py), its Feast
modes stopped at a time cap; ``s3`` runs object_storage.py (parquet from a
loopback S3 server against local files) in a child process. Every server and
client is its own process (worker.py, procs.py), started fresh for each
measurement, so peak RSS (VmHWM) is that of the request. It prints a table
with the targets (targets.toml) and writes ``out/benchmark/results.json`` and
``results.png``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import queue
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import datagen  # noqa: E402
import large as largebench  # noqa: E402
import postgres as pgbench  # noqa: E402
import report  # noqa: E402
from paths import ROOT  # noqa: E402
from procs import Server  # noqa: E402
from targets import case_key, case_label, evaluate_targets, load_targets, size_label  # noqa: E402

from flightlab import mnist  # noqa: E402
from flightlab.engine.settings import size_in_bytes  # noqa: E402

WORKER = Path(__file__).resolve().with_name("worker.py")
OBJECT_STORAGE = Path(__file__).resolve().with_name("object_storage.py")
# The stores, in the order they run: the parquet ones (datagen.py), PostgreSQL
# (postgres.py), parquet in S3 (object_storage.py), 10M entity rows on a 10M-row
# source (large.py).
STORES = (*datagen.STORES, pgbench.STORE, "s3", largebench.STORE)


class Mode(NamedTuple):
    description: str
    server: str | None  # "flightlab", "feast", or None: in-process
    engine: str | None  # flightlab serve_offline --engine
    client: str  # the worker's client mode
    settings: tuple[tuple[str, object], ...] = ()  # more keys of the client's offline_store


AUTO = "flightlab server (--engine auto) + "
MODES: dict[str, Mode] = {
    "local": Mode("local in-process get_historical_features", None, None, "local"),
    "engine-limit": Mode(
        "in-process, no Feast: plain DuckDB ASOF LEFT JOIN into Arrow (the engine's ceiling; "
        "postgres: ADBC fetch of each window, then the join)",
        None,
        None,
        "engine-limit",
    ),
    "engine": Mode("flightlab's engine in-process (no server, no wire)", None, None, "engine"),
    "flightlab": Mode(AUTO + "flightlab client (to_arrow)", "flightlab", "auto", "flightlab"),
    "flightlab-stream": Mode(
        AUTO + "flightlab client (to_arrow_batches, streamed)",
        "flightlab",
        "auto",
        "flightlab-stream",
    ),
    "flightlab-parquet": Mode(
        AUTO + "flightlab client (to_parquet: a folder of files as it streams)",
        "flightlab",
        "auto",
        "flightlab-parquet",
    ),
    "flightlab-feast-engine": Mode(
        "flightlab server --engine feast (Feast's store) + flightlab client (to_arrow)",
        "flightlab",
        "feast",
        "flightlab",
    ),
    "flightlab-engine": Mode(
        "flightlab server --engine flightlab + flightlab client (to_arrow)",
        "flightlab",
        "flightlab",
        "flightlab",
    ),
    "feast": Mode(
        "feast serve_offline + Feast's stock remote client", "feast", None, "feast-client"
    ),
    "flightlab+feast-client": Mode(
        AUTO + "Feast's stock remote client", "flightlab", "auto", "feast-client"
    ),
}
for _n in largebench.PARTITIONS:
    MODES[largebench.partitioned_mode(_n)] = Mode(
        AUTO + f"flightlab client, {_n} partitions fetched at once (to_arrow)",
        *("flightlab", "auto", "flightlab", (("partitions", _n),)),
    )
# Modes run on some stores only: on duckdb, --engine flightlab is what auto does.
MODE_STORES = {"flightlab-engine": ("file",), "engine": (pgbench.STORE,)}
MODE_STORES |= {largebench.partitioned_mode(n): (largebench.STORE,) for n in largebench.PARTITIONS}
# Stores that run some modes only: on postgres, Feast's local store and its
# server, flightlab's server and engine, and the limit; large.py's.
STORE_MODES = {
    pgbench.STORE: ("local", "engine-limit", "engine", "flightlab", "feast"),
    largebench.STORE: tuple(largebench.all_modes()),
}
# Modes stopped at --feast-cap seconds per call, and timed --feast-repeats times
# (on the large store, also stopped at --large-rss-cap of server RSS growth).
CAPPED_MODES = {pgbench.STORE: ("local", "feast"), largebench.STORE: largebench.CAPPED}
# object_storage.py's measurements, as modes of the store "s3".
S3_MODES = {
    "engine-disk": "flightlab's engine in-process, parquet on local disk",
    "engine-s3": "flightlab's engine in-process, the same parquet from the loopback S3 server",
    "flightlab-disk": "flightlab server + client, parquet on local disk",
    "flightlab-s3": "flightlab server + client, the same parquet from the loopback S3 server",
}
# The servers concurrent clients are run against.
CONCURRENT_MODES = ("flightlab", "feast", "flightlab+feast-client")
# The servers a small retrieval's latency is measured on, idle and busy with a
# large one: the big retrieval streams where the client can.
LATENCY_MODES = ("flightlab", "flightlab-feast-engine", "feast")
LATENCY_SMALL_ROWS = 1_000
HANG_SECONDS = 30  # a server idle this long with concurrent calls unanswered is deadlocked
WORKER_TIMEOUT = 7200.0  # seconds a worker may take to answer


class Worker:
    """A worker.py child process: lines to its stdin, its stdout's lines read
    by prefix, its stderr in ``log``. A context manager: at the end its stdin
    is closed (which ends it if it waits there) and it is reaped."""

    def __init__(self, argv: list[str], log: Path):
        self.log = log
        with open(log, "a") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER), *argv],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.PIPE,
                text=True,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, prefix: str, timeout: float = WORKER_TIMEOUT) -> str:
        """The next line starting with ``prefix`` (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no {prefix!r} line after {timeout:.0f}s") from None
            if line is None:  # it died: say of what
                raise RuntimeError(f"the worker exited before printing {prefix!r}: {self._cause()}")
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def result(self, timeout: float = WORKER_TIMEOUT) -> dict[str, Any]:
        return json.loads(self.expect("RESULT", timeout))

    def _cause(self) -> str:
        """The last line of its log: its exception, when it died of one."""
        try:
            lines = [line for line in self.log.read_text().splitlines() if line.strip()]
        except OSError:
            return "no log"
        return lines[-1][:300] if lines else "empty log"

    def __enter__(self) -> Worker:
        return self

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Benchmark:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out).resolve()
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        self.repos: dict[tuple[str, str], Path] = {}
        self.results: list[dict[str, Any]] = []
        self.concurrency: list[dict[str, Any]] = []
        self.latency: list[dict[str, Any]] = []
        self.loopback: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.pg: pgbench.Cluster | None = None  # the postgres store's cluster, while it runs
        self.targets = load_targets()  # read first: a malformed row stops the run at once

    def log(self, message: str) -> None:
        elapsed = time.perf_counter() - self.started
        print(
            f"[{int(elapsed // 60):3d}m{elapsed % 60:04.1f}s] {message}",
            file=sys.stderr,
            flush=True,
        )

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.log("note: " + message)

    @contextmanager
    def failing(self, record: dict[str, Any]) -> Iterator[None]:
        """A measurement that fails records why and ends there, not the run."""
        try:
            yield
        except DidNotFinish as exc:
            record.update(error=str(exc), stopped=True)
            if exc.seconds is not None:
                record["capped"] = exc.seconds
            self.log(f"  {exc}: stopped (logs in {self.logs})")
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
            self.log(f"  FAILED: {record['error']} (logs in {self.logs})")

    def client(self, mode: str, store: str, case: str, repeats: int, log: str, *more: str):
        """A worker running the client ``mode`` (worker.py's) on ``case``."""
        argv = ["client", "--mode", mode, "--store", store, *more]
        argv += ["--case", case, "--repo", str(self.repo(store, case)), "--repeats", str(repeats)]
        return Worker(argv, self.logs / log)

    def client_options(self, mode: str, store: str) -> list[str]:
        """The worker options of ``mode`` beyond its client mode: its offline
        store settings; on the large store, the memory limit and no coercion."""
        options = [f"--offline-setting={k}={v}" for k, v in MODES[mode].settings]
        if store == largebench.STORE:
            options += ["--memory-limit", self.args.large_memory_limit, "--no-coerce"]
        return options

    def server(self, mode: str, store: str, case: str, tag: str) -> Server:
        kind, engine = MODES[mode].server, MODES[mode].engine
        extra = ["--engine", engine] if kind == "flightlab" else []
        if kind == "flightlab" and store == pgbench.STORE:
            extra += ["--log-level", "info"]  # it logs the plan of each retrieval
        if kind == "flightlab" and store == largebench.STORE:
            rows = str(max(int(case.split(":")[1]), 10_000_000))
            extra += ["--engine-memory-limit", self.args.large_memory_limit]
            extra += ["--max-entity-rows", rows]
        # --flightlab-args come last, so they can override the engine.
        extra += self.args.flightlab_args if kind == "flightlab" else []
        return Server(kind, self.repo(store, case), self.logs / f"{tag}-server.log", extra)

    def repo(self, store: str, case: str) -> Path:
        return self.repos[store, "mnist" if case == "mnist" else "rows"]

    # --- measurements ------------------------------------------------------------

    def run_mode(self, store: str, case: str, mode: str, repeats: int) -> dict[str, Any]:
        description, server_kind = MODES[mode].description, MODES[mode].server
        tag = f"{store}-{case.replace(':', '')}-{mode}"
        cap = self.args.feast_cap if mode in CAPPED_MODES.get(store, ()) else None
        repeats = self.args.feast_repeats if cap else repeats
        record = _record(store, case, mode, description=description, repeats=repeats)
        capped = f", each stopped at {cap:.0f} s" if cap else ""
        self.log(f"{store} {case_label(case)}: {description}, {repeats} run(s){capped}")
        # The client starts first and imports Feast while the server starts;
        # it waits for the server's port on stdin before its first call.
        worker_mode = MODES[mode].client
        server_log = self.logs / f"{tag}-server.log"
        logged = server_log.stat().st_size if server_log.exists() else 0
        more = ("--sync",) if cap else ()
        more += tuple(self.client_options(mode, store))
        with (
            self.failing(record),
            self.client(worker_mode, store, case, repeats, f"{tag}.log", *more) as client,
        ):
            if server_kind is None:
                client.send("0")
                calls = self._calls(client, repeats, cap)
            else:
                with self.server(mode, store, case, tag) as srv:
                    client.send(f"{srv.port} {srv.pid}")
                    calls = self._capped_calls(client, srv, store, repeats, cap)
                    record.update(
                        server_peak_rss=srv.peak_rss(),
                        server_idle_rss=srv.idle_rss,
                        server_start_seconds=srv.started_in,
                    )
            record.update(_timings(calls), **_rss_figures(calls))
            if store == largebench.STORE and server_kind == "flightlab":
                limit = size_in_bytes(self.args.large_memory_limit) or 0
                record.update(engine_memory_limit=limit)
                record.update(server_rss_over_limit=record.get("server_call_rss", 0) - limit)
            plans = sorted({c["plan"] for c in calls if c.get("plan")})
            if server_kind == "flightlab" and store == pgbench.STORE:
                plans = _logged_plans(server_log, logged)
            if plans:
                record["plans"] = plans
            self.log(
                f"  median {record['median']:.3f}s of {[round(t, 3) for t in record['times']]}, "
                f"{record['result_rows']:,} rows, {record['result_bytes'] / 1e6:.1f} MB"
                + (f", plan {'/'.join(plans)}" if plans else "")
            )
        if "capped" in record and self.pg is not None:
            ended = self.pg.end_queries()  # what the stopped call left running there
            self.log(f"  {ended} PostgreSQL session(s) it left were ended")
        return record

    def _calls(self, client: Worker, repeats: int, cap: float | None) -> list[dict[str, Any]]:
        """The client's timed calls; with a ``cap``, one at a time (``--sync``),
        the client killed and ``DidNotFinish`` raised when one takes longer."""
        if cap is None:
            return client.result()["calls"]
        calls = []
        for _ in range(repeats):
            client.expect("READY")
            client.send("go")
            try:
                calls.append(_checked(client.result(timeout=cap)))
            except TimeoutError:
                client.kill()
                raise DidNotFinish(cap) from None
        return calls

    def _capped_calls(
        self, client: Worker, srv: Server, store: str, repeats: int, cap: float | None
    ) -> list[dict[str, Any]]:
        """``_calls``; on the large store a capped call is also stopped when
        the server's RSS grows past --large-rss-cap."""
        if cap is None or store != largebench.STORE:
            return self._calls(client, repeats, cap)
        rss_cap = size_in_bytes(self.args.large_rss_cap) or 0
        started = time.monotonic()
        with largebench.RssCap(srv.pid, rss_cap, client.kill).watching() as watch:
            try:
                return self._calls(client, repeats, cap)
            except RuntimeError:
                if watch.tripped_at is None:
                    raise
        raise DidNotFinish(
            None,
            f"did not finish: stopped after {time.monotonic() - started:.0f} s, the server's "
            f"RSS having grown by {watch.tripped_at / 1e6:,.0f} MB, past the cap of "
            f"{self.args.large_rss_cap} (--large-rss-cap)",
        )

    def run_concurrent(self, store: str, case: str, mode: str, repeats: int) -> dict[str, Any]:
        clients = self.args.clients
        tag = f"{store}-{case.replace(':', '')}-concurrent-{mode}"
        record = _record(store, case, mode, clients=clients, repeats=repeats)
        self.log(
            f"{store} {case_label(case)}: {clients} concurrent clients, {MODES[mode].description}"
        )
        with self.failing(record), ExitStack() as stack:
            workers = [
                stack.enter_context(
                    self.client(
                        MODES[mode].client,
                        *(store, case, repeats, f"{tag}-client{i}.log"),
                        *("--seed", str(11 + i), "--sync"),
                    )
                )
                for i in range(clients)
            ]
            srv = stack.enter_context(self.server(mode, store, case, tag))
            for worker in workers:  # warm up one at a time: only the timed calls overlap
                worker.send(str(srv.port))
                worker.expect("READY")
            limit = self._concurrency_limit(store, case, mode, clients)
            totals, per_client, errors = [], [], []
            for repeat in range(repeats):
                if repeat:
                    for worker in workers:
                        worker.expect("READY")
                for worker in workers:
                    worker.send("go")
                calls = self._collect(workers, srv, limit)
                totals.append(max(c["end"] for c in calls) - min(c["start"] for c in calls))
                per_client.append([c["seconds"] for c in calls])
                errors += [c["error"] for c in calls if "error" in c]
            record.update(
                server_peak_rss=srv.peak_rss(),
                totals=totals,
                median_total=statistics.median(totals),
                per_client_seconds=per_client,
                median_client=statistics.median(t for run in per_client for t in run),
                failed_calls=len(errors),
                calls=clients * repeats,
                call_errors=sorted(set(errors))[:5],
            )
            self.log(
                f"  median total {record['median_total']:.3f}s of {[round(t, 3) for t in totals]}"
            )
            if errors:
                self.log(f"  {len(errors)} of {clients * repeats} calls FAILED: {errors[0]}")
        return record

    def _concurrency_limit(self, store: str, case: str, mode: str, clients: int) -> float:
        """How long concurrent calls may take: --concurrency-timeout, or by
        default 20x the time of running them one after the other (from this
        run's own single-call median), at least 60 s; 300 s if unmeasured."""
        if self.args.concurrency_timeout is not None:
            return self.args.concurrency_timeout
        for record in self.results:
            if (record["store"], record["case"], record["mode"]) == (store, case, mode):
                if "median" in record:
                    return max(60.0, 20 * clients * record["median"])
        return 300.0

    def _collect(self, workers: list[Worker], srv: Server, limit: float) -> list[dict[str, Any]]:
        """The concurrent calls' results. A server that uses no CPU for
        HANG_SECONDS while calls are unanswered is deadlocked; one still
        spinning after ``limit`` seconds is livelocked: either way the case
        fails then rather than hang the run."""
        results: list[dict[str, Any] | None] = [None] * len(workers)
        started = last_busy = time.monotonic()
        last_cpu = srv.cpu_seconds() or 0.0
        while any(r is None for r in results):
            for i, worker in enumerate(workers):
                if results[i] is None:
                    try:
                        results[i] = worker.result(0.5)
                    except TimeoutError:
                        pass
            now, cpu = time.monotonic(), srv.cpu_seconds() or 0.0
            if cpu - last_cpu > 0.05:
                last_cpu, last_busy = cpu, now
            pending = sum(r is None for r in results)
            if pending and now - last_busy > HANG_SECONDS:
                raise TimeoutError(
                    f"the server hung: no CPU used for {HANG_SECONDS}s "
                    f"with {pending} of {len(workers)} calls unanswered"
                )
            if pending and now - started > limit:
                raise TimeoutError(
                    f"the server hung: {pending} of {len(workers)} calls unanswered after "
                    f"{limit:.0f}s (20x their one-after-the-other time), the server busy"
                )
        return [r for r in results if r is not None]

    def run_latency(self, store: str, mode: str, repeats: int) -> dict[str, Any]:
        """A small retrieval's latency on an idle server, then with a large
        retrieval in flight: one client process starts the large one and,
        once its first batch is in hand (or ``--busy-delay`` seconds into the
        call, whichever comes first: a client that does not stream never
        says), another times the small one."""
        small_mode = MODES[mode].client
        big_mode = "flightlab-stream" if small_mode == "flightlab" else small_mode
        big_rows = self.args.latency_rows
        big_case, small_case = f"rows:{big_rows}", f"rows:{LATENCY_SMALL_ROWS}"
        tag = f"{store}-latency-{mode}"
        record = _record(store, big_case, mode, big_rows=big_rows, small_rows=LATENCY_SMALL_ROWS)
        record["repeats"] = repeats
        self.log(
            f"{store}: {size_label(LATENCY_SMALL_ROWS)}-row latency, idle and with a "
            f"{size_label(big_rows)}-row retrieval in flight: {MODES[mode].description}"
        )
        with self.failing(record), ExitStack() as stack:
            big = stack.enter_context(
                self.client(big_mode, store, big_case, repeats, f"{tag}-big.log", "--sync")
            )
            small = stack.enter_context(
                self.client(
                    small_mode, store, small_case, 2 * repeats, f"{tag}-small.log", "--sync"
                )
            )
            srv = stack.enter_context(self.server(mode, store, big_case, tag))
            for worker in (big, small):  # warm up one at a time
                worker.send(str(srv.port))
                worker.expect("READY")
            idle, busy, in_flight, ended_first, triggers, errors = [], [], [], [], [], []
            for repeat in range(repeats):
                if repeat:
                    small.expect("READY")
                small.send("go")
                idle.append(_checked(small.result()))
            for repeat in range(repeats):
                small.expect("READY")
                if repeat:  # its first READY came with the warm-up
                    big.expect("READY")
                big.send("go")
                big.expect("CALLING")
                triggers.append(self._wait_busy(big, big_mode))
                small.send("go")
                small_call, big_call = small.result(), big.result()
                # A server that fails a call under load: reported, not hidden.
                for side, call in (("small", small_call), ("large", big_call)):
                    if "error" in call:
                        errors.append(f"{side} call: {call['error']}")
                if "error" in small_call:
                    continue
                busy.append(small_call)
                # Overlapped: the small call started before the large one
                # ended; ended_first: it also ended before the large one.
                in_flight.append(small_call["start"] < big_call["end"])
                ended_first.append(small_call["end"] <= big_call["end"])
                record.setdefault("big_seconds", []).append(big_call["seconds"])
            record.update(
                idle_seconds=[c["seconds"] for c in idle],
                busy_seconds=[c["seconds"] for c in busy],
                idle_median=statistics.median(c["seconds"] for c in idle),
                in_flight=in_flight,
                ended_first=ended_first,
                triggers=triggers,
                call_errors=errors,
            )
            if not busy:
                raise RuntimeError(f"every call under load failed: {errors[0]}")
            record["busy_median"] = statistics.median(c["seconds"] for c in busy)
            record["ratio"] = record["busy_median"] / record["idle_median"]
            if errors:
                self.log(f"  {len(errors)} call(s) FAILED under load: {errors[0]}")
            self.log(
                f"  idle {record['idle_median']:.3f}s, busy {record['busy_median']:.3f}s "
                f"(x{record['ratio']:.1f}); started while the large one was in flight: "
                f"{sum(in_flight)} of {len(in_flight)}, ended before it: {sum(ended_first)}"
            )
        return record

    def _wait_busy(self, big: Worker, mode: str) -> str:
        """Wait until the large retrieval is streaming, or ``--busy-delay``
        seconds; says which came first."""
        if mode != "flightlab-stream":
            time.sleep(self.args.busy_delay)
            return "delay"
        try:
            big.expect("FIRST_BATCH", self.args.busy_delay)
            return "first batch"
        except TimeoutError:
            return "delay"

    def run_loopback(self, case: str, repeats: int) -> dict[str, Any]:
        record: dict[str, Any] = {"case": case, "case_label": case_label(case), "repeats": repeats}
        self.log(f"Flight loopback ceiling, a {case_label(case)} result")
        tag = f"loopback-{case.replace(':', '')}"
        repo = self.repo(self.args.stores[0], case)
        serve = ["--case", case, "--repo", str(repo)]
        with (
            self.failing(record),
            Server("loopback", None, self.logs / f"{tag}-server.log", serve) as srv,
        ):
            argv = ["loopback-client", "--port", str(srv.port), "--repeats", str(repeats)]
            with Worker(argv, self.logs / f"{tag}.log") as client:
                calls = client.result()["calls"]
            record.update(server_peak_rss=srv.peak_rss(), **_timings(calls))
            record["gb_per_second"] = record["result_bytes"] / record["median"] / 1e9
            self.log(f"  median {record['median']:.3f}s, {record['gb_per_second']:.2f} GB/s")
        return record

    # --- the postgres store and parquet in S3 ----------------------------------------

    def run_postgres(self, mnist_base: bool) -> None:
        """The postgres store's cases on a throwaway cluster (postgres.py), and
        for the MNIST target the duckdb store's MNIST through the server, if
        the duckdb store is not in this run."""
        try:
            cluster = pgbench.Cluster(self.out / "work", self.args.mnist, log=self.log)
            cluster.__enter__()
        except Exception as exc:  # PostgreSQL missing (scripts/backends.sh), or failing
            self.note(f"the postgres store is skipped: {type(exc).__name__}: {exc}")
            return
        self.pg = cluster
        try:
            self.notes.extend(cluster.load_notes)
            self.repos.update(cluster.repos)
            for case in self.cases_for(pgbench.STORE):
                for mode in self.modes_for(pgbench.STORE):
                    self.results.append(self.run_mode(pgbench.STORE, case, mode, self.args.repeats))
            if mnist_base and "flightlab" in self.args.modes:
                self.log("the duckdb store's MNIST, for the postgres MNIST target:")
                self.results.append(
                    self.run_mode("duckdb", "mnist", "flightlab", self.args.repeats)
                )
        finally:
            self.pg = None
            cluster.__exit__(None, None, None)

    def run_object_storage(self) -> None:
        """object_storage.py in a child process: its lines into the progress
        log, its measurements into the results as the store ``s3``."""
        self.log("s3: parquet from the loopback S3 server against local files (object_storage.py)")
        found = self.out / "object_storage.json"
        found.unlink(missing_ok=True)
        log_path = self.logs / "s3-object_storage.log"
        command = [sys.executable, str(OBJECT_STORAGE), "--json", str(found)]
        command += ["--work", str(self.out / "work" / "object_storage")]
        command += ["--quick"] if self.args.quick else ["--repeats", str(self.args.repeats)]
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True
            )
            for line in process.stdout:
                if line.strip():
                    self.log(f"  s3: {line.rstrip()}")
            code = process.wait()
        if code != 0 or not found.exists():
            self.note(f"s3: object_storage.py failed (exit {code}; {log_path})")
            return
        measured = json.loads(found.read_text())
        for row in measured["rows"]:
            for side, where in (("local", "disk"), ("s3", "s3")):
                mode = f"{row['way']}-{where}"
                record = _record("s3", f"rows:{row['rows']}", mode, description=S3_MODES[mode])
                times = row[f"{side}_times"]
                median = statistics.median(times)
                record.update(
                    repeats=len(times),
                    times=times,
                    median=median,
                    result_rows=row["result_rows"],
                    result_bytes=row["result_bytes"],
                    rows_per_second=row["result_rows"] / median,
                )
                if side == "s3" and not row["same"]:
                    record["error"] = "the answer from S3 differs from the local files' answer"
                self.results.append(record)
        self.notes.extend(f"s3: {note}" for note in measured["notes"])

    # --- the run -------------------------------------------------------------------

    def cases_for(self, store: str) -> list[str]:
        if store == "s3":
            return []  # object_storage.py's own
        if store == largebench.STORE:
            return largebench.cases(self.args.large_sizes)
        if store == pgbench.STORE:
            cases = [f"rows:{n}:{kind}" for n in self.args.pg_sizes for kind in pgbench.VIEWS]
        else:
            cases = [f"rows:{n}" for n in self.args.sizes]
        if self.args.mnist and (store != "file" or self.args.mnist_file):
            cases.append("mnist")
        return cases

    def modes_for(self, store: str) -> list[str]:
        return [
            mode
            for mode in self.args.modes
            if store in MODE_STORES.get(mode, (store,)) and mode in STORE_MODES.get(store, MODES)
        ]

    def run(self) -> dict[str, Any]:
        args = self.args
        load_before = os.getloadavg()
        stores = [store for store in STORES if store in args.stores]
        parquet = tuple(s for s in stores if s in datagen.STORES)
        # The postgres MNIST target compares with the duckdb store's MNIST.
        mnist_base = args.mnist and pgbench.STORE in stores and "duckdb" not in parquet
        if parquet or mnist_base:
            self.log(f"preparing the data and repos under {self.out / 'work'}")
            self.repos = datagen.build_repos(
                self.out / "work", parquet or ("duckdb",), with_mnist=args.mnist, log=self.log
            )
        if largebench.STORE in stores:
            repo = datagen.build_large_repo(self.out / "work", log=self.log)
            self.repos[largebench.STORE, "rows"] = repo
        if args.mnist and "file" in stores and not args.mnist_file:
            self.note(
                "MNIST on the file (dask) store is skipped: one retrieval takes ~14 min there "
                "(~2 s on duckdb); pass --mnist-file to include it (it then runs 1 repeat)"
            )
        for store in stores:
            if store == pgbench.STORE:
                self.run_postgres(mnist_base)
                continue
            if store == "s3":
                self.run_object_storage()
                continue
            for case in self.cases_for(store):
                repeats = 1 if (case == "mnist" and store == "file") else args.repeats
                for mode in self.modes_for(store):
                    self.results.append(self.run_mode(store, case, mode, repeats))
            if store not in datagen.STORES:
                continue  # the large store: no concurrency or latency measurement
            if args.clients > 0:
                case = f"rows:{args.concurrency_rows}"
                for mode in CONCURRENT_MODES:
                    self.concurrency.append(self.run_concurrent(store, case, mode, args.repeats))
            if args.latency and store in args.latency_stores:
                for mode in LATENCY_MODES:
                    self.latency.append(self.run_latency(store, mode, args.repeats))
        if args.loopback and parquet:
            cases = {case for store in parquet for case in self.cases_for(store)}
            for case in sorted(cases, key=case_key):
                self.loopback.append(self.run_loopback(case, args.repeats))
        report.add_ratios(self.results)
        document = {
            "meta": {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "duration_seconds": time.perf_counter() - self.started,
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "args": vars(args),
                "machine": {
                    "cpus": os.cpu_count(),
                    "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_average_before": load_before,
                    "load_average_after": os.getloadavg(),
                },
                "versions": {
                    name: _version(name)
                    for name in (
                        *("feast", "pyarrow", "duckdb", "dask", "pandas", "flightlab"),
                        *("adbc-driver-postgresql", "psycopg", "moto"),
                    )
                },
                "data": {
                    "user_stats_rows": datagen.USERS * datagen.ROWS_PER_USER,
                    "users": datagen.USERS,
                    "large_user_stats_rows": datagen.LARGE_USERS * datagen.ROWS_PER_USER,
                    "large_memory_limit": args.large_memory_limit,
                    "features": list(datagen.FEATURES),
                    "mnist_images": 70_000,
                    "mnist_features": len(mnist.feature_refs()),
                    "postgres": {
                        "driver_stats_rows": pgbench.ROWS,
                        "drivers": pgbench.DRIVERS,
                        "days": pgbench.DAYS,
                        "features": list(pgbench.FEATURES),
                        "views": pgbench.VIEWS,
                    },
                },
                "modes": {
                    **{mode: MODES[mode].description for mode in MODES},
                    **S3_MODES,
                },
            },
            "results": self.results,
            "concurrency": self.concurrency,
            "latency": self.latency,
            "loopback": self.loopback,
            "notes": self.notes,
        }
        document["targets"] = evaluate_targets(document, self.targets)
        return document


class DidNotFinish(Exception):
    """A capped call that was stopped at its time cap (``seconds``) or, with
    ``seconds`` None, at its memory cap (``message`` says which)."""

    def __init__(self, seconds: float | None, message: str | None = None):
        super().__init__(message or f"did not finish in {seconds:.0f} s")
        self.seconds = seconds


def _logged_plans(log: Path, offset: int) -> list[str]:
    """The plans a flightlab server logged (``postgres retrieval: plan=...``)
    past ``offset`` in its log, the warm-up call's (the first) left out."""
    try:
        with open(log, errors="replace") as text:
            text.seek(offset)
            plans = re.findall(r"postgres retrieval: plan=(\w+)", text.read())
    except OSError:
        return []
    return sorted(set(plans[1:]))


def _record(store: str, case: str, mode: str, **more: Any) -> dict[str, Any]:
    return {"store": store, "case": case, "case_label": case_label(case), "mode": mode, **more}


def _timings(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The calls' times, their median, and the result's size."""
    times = [c["seconds"] for c in calls]
    median = statistics.median(times)
    rows, nbytes = calls[-1]["rows"], calls[-1]["bytes"]
    return dict(times=times, median=median, result_rows=rows, result_bytes=nbytes)


def _rss_figures(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The client's peak RSS and, over the calls, the most its RSS (and the
    server's) rose in one; streamed, the rise until the first batch (the entity
    upload) and from the first batch to the end of the stream."""

    def rise(peak: str, before: str) -> int:
        return max((c[peak] or 0) - (c[before] or 0) for c in calls)

    figures = {
        "client_peak_rss": max(c["peak_rss"] or 0 for c in calls),
        "client_call_rss": rise("peak_rss", "rss_before"),
        "rows_per_second": calls[-1]["rows"] / statistics.median(c["seconds"] for c in calls),
    }
    if all(c.get("server_reset") for c in calls):
        figures["server_call_rss"] = rise("server_call_peak_rss", "server_rss_before")
    if all("stream_peak_rss" in c for c in calls):
        figures["client_upload_rss"] = rise("upload_peak_rss", "rss_before")
        figures["client_stream_rss"] = rise("stream_peak_rss", "first_batch_rss")
    return figures


def _checked(call: dict[str, Any]) -> dict[str, Any]:
    """A --sync call's result; a failed call fails the measurement."""
    if "error" in call:
        raise RuntimeError(f"a call failed: {call['error']}")
    return call


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def parse_size(text: str) -> int:
    """``10k``, ``1M``, ``1_000`` -> rows."""
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale != 1 else text) * scale)


def _listed(parse=str.strip, choices=()):
    """A comma-separated option: its items, parsed, each among ``choices`` if given."""

    def values(text: str) -> list:
        items = [parse(item) for item in text.split(",") if item.strip()]
        if choices and (wrong := set(items) - set(choices)):
            raise argparse.ArgumentTypeError(f"{wrong} not in {', '.join(choices)}")
        return items

    return values


# The options: (flag, default, type, help); string defaults are parsed as given.
OPTIONS = (
    ("--sizes", "10k,100k,1M", _listed(parse_size), "entity rows per case"),
    ("--stores", ",".join(STORES), _listed(choices=STORES), "offline stores"),
    ("--pg-sizes", "100k,1M", _listed(parse_size), "entity rows per postgres case"),
    ("--feast-cap", 240.0, float, "seconds a capped call (Feast's store, server) may take"),
    ("--feast-repeats", 1, int, "timed calls of a capped mode"),
    ("--repeats", 3, int, "timed calls per cell"),
    ("--modes", ",".join(MODES), _listed(choices=tuple(MODES)), "modes to run"),
    ("--clients", 4, int, "concurrent clients per server (0: none)"),
    ("--concurrency-rows", "100k", parse_size, "entity rows per concurrent client"),
    ("--latency-rows", "1M", parse_size, "entity rows of the large retrieval in flight"),
    ("--latency-stores", "duckdb", _listed(choices=datagen.STORES), "stores to time latency on"),
    ("--busy-delay", 1.0, float, "seconds into the large call to start the small one at most"),
    ("--concurrency-timeout", None, float, "seconds concurrent calls may take (None: 20x theirs)"),
    ("--large-sizes", "10M", _listed(parse_size), "entity rows per case of the large store"),
    ("--large-memory-limit", "1GB", str, "the large store's --engine-memory-limit"),
    ("--large-rss-cap", "8GB", str, "server RSS growth a capped call may reach (large store)"),
    ("--flightlab-args", "", shlex.split, "more `flightlab serve_offline` args, after --engine"),
    ("--out", str(ROOT / "out" / "benchmark"), str, "where results, logs and repos go"),
)
SWITCHES = {  # on by default; --no-X: off
    "--mnist": "the full MNIST retrieval",
    "--latency": "a 1k-row retrieval's latency, idle and with a large one in flight",
    "--loopback": "the raw Flight loopback ceiling",
}
QUICK = dict(
    sizes="1k,10k",
    repeats=1,
    mnist=False,
    concurrency_rows="10k",
    latency_rows="100k",
    pg_sizes="10k,100k",
    large_sizes="1M",
    feast_cap=60.0,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with ``QUICK``'s defaults under ``--quick``; benchmarks/README.md
    says what each does."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Benchmark flightlab against local retrieval and Feast's own offline server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    quick = (f"--{k}={v}".replace("_", "-") for k, v in QUICK.items())
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {' '.join(quick)}")
    for flag, default, parse, text in OPTIONS:
        parser.add_argument(flag, default=default, type=parse, help=text)
    for flag, text in SWITCHES.items():
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=True, help=text)
    parser.add_argument("--mnist-file", action="store_true", help="MNIST on the file store too")
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**QUICK)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    bench = Benchmark(parse_args(argv))
    document = bench.run()
    out = bench.out
    (out / "results.json").write_text(json.dumps(document, indent=1) + "\n")
    print(report.format_report(document))
    try:
        report.plot(document, out / "results.png")
        chart = f", {out / 'results.png'}"
    except Exception as exc:  # the numbers matter more than the picture
        chart = f" (no chart: {type(exc).__name__}: {exc})"
    minutes = document["meta"]["duration_seconds"] / 60
    bench.log(f"done in {minutes:.1f} min: {out / 'results.json'}{chart}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
