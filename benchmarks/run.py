"""The flightlab benchmark: one command, every mode, both offline stores.

    .venv/bin/python benchmarks/run.py            # the full run (see README.md)
    .venv/bin/python benchmarks/run.py --quick    # 1k/10k rows, 1 repeat, no MNIST

On one generated repo and data set (benchmarks/datagen.py), for each offline
store (duckdb, file) and each case (10k, 100k, 1M entity rows; the full MNIST
retrieval), it times ``get_historical_features(...)`` in these modes:

- ``local``: in-process, the repo's own offline store;
- ``flightlab``: ``flightlab serve_offline`` + flightlab's client (``to_arrow``);
- ``flightlab-stream``: the same, consuming ``to_arrow_batches`` batch by batch;
- ``feast``: ``feast serve_offline`` + Feast's stock ``type: remote`` client;
- ``flightlab+feast-client``: ``flightlab serve_offline`` + Feast's stock client;

then 4 concurrent clients on each server, and the raw Arrow Flight loopback
ceiling (a trivial server streaming an in-memory table of the result's size).
Every server and client is its own process, started fresh for each
measurement, so peak RSS (VmHWM) is that of the request. It prints a table and
writes ``out/benchmark/results.json`` and ``out/benchmark/results.png``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import queue
import shlex
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import datagen  # noqa: E402
import report  # noqa: E402
from paths import ROOT  # noqa: E402
from procs import Server  # noqa: E402
from targets import evaluate_targets  # noqa: E402

from flightlab import mnist  # noqa: E402

WORKER = Path(__file__).resolve().with_name("worker.py")


class Mode(NamedTuple):
    description: str
    server: str | None  # "flightlab", "feast", or None: in-process
    engine: str | None  # flightlab serve_offline --engine
    client: str  # the worker's client mode


MODES: dict[str, Mode] = {
    "local": Mode("local in-process get_historical_features", None, None, "local"),
    "engine-limit": Mode(
        "in-process plain DuckDB ASOF LEFT JOIN into Arrow (the engine's ceiling)",
        None,
        None,
        "engine-limit",
    ),
    "flightlab": Mode(
        "flightlab server (--engine auto) + flightlab client (to_arrow)",
        "flightlab",
        "auto",
        "flightlab",
    ),
    "flightlab-stream": Mode(
        "flightlab server (--engine auto) + flightlab client (to_arrow_batches, streamed)",
        "flightlab",
        "auto",
        "flightlab-stream",
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
        "flightlab server (--engine auto) + Feast's stock remote client",
        "flightlab",
        "auto",
        "feast-client",
    ),
}
# Modes run on some stores only: on duckdb, --engine flightlab is what auto does.
MODE_STORES = {"flightlab-engine": ("file",)}
# The servers 4 concurrent clients are run against.
CONCURRENT_MODES = ("flightlab", "feast", "flightlab+feast-client")
# The servers a small retrieval's latency is measured on, idle and busy with a
# large one: the big retrieval streams where the client can.
LATENCY_MODES = ("flightlab", "flightlab-feast-engine", "feast")
LATENCY_SMALL_ROWS = 1_000
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
# A server idle this long with concurrent calls unanswered is deadlocked.
HANG_SECONDS = 30
QUICK_SIZES = (1_000, 10_000)


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    return int(float(number) * scale)


def size_label(rows: int) -> str:
    if rows >= 1_000_000 and rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    if rows >= 1_000 and rows % 1_000 == 0:
        return f"{rows // 1_000}k"
    return str(rows)


def case_label(case: str) -> str:
    return "MNIST" if case == "mnist" else size_label(int(case.split(":")[1]))


class LineReader:
    """A child's stdout, line by line, with a timeout."""

    def __init__(self, stream: IO[str]):
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        """The next line starting with ``prefix`` (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no {prefix!r} line after {timeout:.0f}s") from None
            if line is None:
                raise RuntimeError(f"the worker exited before printing {prefix!r}")
            if line.startswith(prefix):
                return line[len(prefix) :].strip()


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
        self.repos_root = self.out / "work"

    # --- logging -------------------------------------------------------------

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

    # --- children --------------------------------------------------------------

    def _worker(self, argv: list[str], log_name: str) -> tuple[subprocess.Popen, LineReader]:
        log = open(self.logs / log_name, "a")  # noqa: SIM115 - the child owns it
        try:
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), *argv],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.PIPE,
                text=True,
            )
        finally:
            log.close()
        return proc, LineReader(proc.stdout)

    def _result(self, reader: LineReader, log_name: str) -> dict[str, Any]:
        try:
            return json.loads(reader.expect("RESULT", self.args.timeout))
        except RuntimeError as exc:  # the worker died: say of what
            raise RuntimeError(f"{exc}: {_last_error(self.logs / log_name)}") from None

    def _client_argv(self, worker_mode: str, store: str, case: str, repeats: int) -> list[str]:
        return [
            "client",
            *("--mode", worker_mode, "--case", case, "--repo", str(self.repo(store, case))),
            *("--repeats", str(repeats)),
        ]

    # --- measurements ------------------------------------------------------------

    def run_mode(self, store: str, case: str, mode: str, repeats: int) -> dict[str, Any]:
        description, server_kind, _, worker_mode = MODES[mode]
        tag = f"{store}-{case.replace(':', '')}-{mode}"
        record: dict[str, Any] = {
            "store": store,
            "case": case,
            "case_label": case_label(case),
            "mode": mode,
            "description": description,
            "repeats": repeats,
        }
        self.log(f"{store} {case_label(case)}: {description}, {repeats} run(s)")
        # The client starts first and imports Feast while the server starts;
        # it waits for the server's port on stdin before its first call.
        log_name = tag + ".log"
        proc, reader = self._worker(self._client_argv(worker_mode, store, case, repeats), log_name)
        try:
            if server_kind is None:
                _send(proc, "0")
                answer = self._result(reader, log_name)
            else:
                with self.server(mode, store, case, tag) as srv:
                    _send(proc, f"{srv.port} {srv.pid}")
                    answer = self._result(reader, log_name)
                    record["server_peak_rss"] = srv.peak_rss()
                    record["server_idle_rss"] = srv.idle_rss
                    record["server_start_seconds"] = srv.started_in
        except Exception as exc:  # one failed case must not end the run
            record["error"] = f"{type(exc).__name__}: {exc}"
            self.log(f"  FAILED: {record['error']} (logs in {self.logs})")
            return record
        finally:
            _finish(proc)
        calls = answer["calls"]
        times = [c["seconds"] for c in calls]
        record.update(
            times=times,
            median=statistics.median(times),
            result_rows=calls[-1]["rows"],
            result_bytes=calls[-1]["bytes"],
            client_peak_rss=max(c["peak_rss"] or 0 for c in calls),
            client_call_rss=max((c["peak_rss"] or 0) - (c["rss_before"] or 0) for c in calls),
        )
        record["rows_per_second"] = record["result_rows"] / record["median"]
        if calls and all(c.get("server_reset") for c in calls):
            # How far the server's RSS rose above its pre-call RSS in one call.
            record["server_call_rss"] = max(
                (c["server_call_peak_rss"] or 0) - (c["server_rss_before"] or 0) for c in calls
            )
        if all("stream_peak_rss" in c for c in calls):
            # Streaming: the RSS rise until the first batch (the entity upload)
            # and from the first batch to the end of the stream.
            record["client_upload_rss"] = max(
                (c["upload_peak_rss"] or 0) - (c["rss_before"] or 0) for c in calls
            )
            record["client_stream_rss"] = max(
                (c["stream_peak_rss"] or 0) - (c["first_batch_rss"] or 0) for c in calls
            )
        self.log(
            f"  median {record['median']:.3f}s of {[round(t, 3) for t in times]}, "
            f"{record['result_rows']:,} rows, {record['result_bytes'] / 1e6:.1f} MB"
        )
        return record

    def run_concurrent(self, store: str, case: str, mode: str, repeats: int) -> dict[str, Any]:
        worker_mode = MODES[mode].client
        clients = self.args.clients
        tag = f"{store}-{case.replace(':', '')}-concurrent-{mode}"
        record: dict[str, Any] = {
            "store": store,
            "case": case,
            "case_label": case_label(case),
            "mode": mode,
            "clients": clients,
            "repeats": repeats,
        }
        description = MODES[mode].description
        self.log(f"{store} {case_label(case)}: {clients} concurrent clients, {description}")
        workers = []
        for i in range(clients):
            argv = self._client_argv(worker_mode, store, case, repeats)
            argv += ["--seed", str(11 + i), "--sync"]
            workers.append(self._worker(argv, f"{tag}-client{i}.log"))
        try:
            with self.server(mode, store, case, tag) as srv:
                for proc, reader in workers:
                    # Warm up one at a time: only the timed calls overlap.
                    _send(proc, str(srv.port))
                    reader.expect("READY", self.args.timeout)
                totals, per_client, errors = [], [], []
                for repeat in range(repeats):
                    if repeat:
                        for _, reader in workers:
                            reader.expect("READY", self.args.timeout)
                    for proc, _ in workers:
                        _send(proc, "go")
                    limit = self._concurrency_limit(store, case, mode, clients)
                    calls = self._collect([r for _, r in workers], srv, limit)
                    totals.append(max(c["end"] for c in calls) - min(c["start"] for c in calls))
                    per_client.append([c["seconds"] for c in calls])
                    errors += [c["error"] for c in calls if "error" in c]
                record["server_peak_rss"] = srv.peak_rss()
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, RuntimeError):  # a client died: say of what
                record["error"] += ": " + _last_error(self.logs / f"{tag}-client0.log")
            self.log(f"  FAILED: {record['error']} (logs in {self.logs})")
            return record
        finally:
            for proc, _ in workers:
                _finish(proc)
        if "error" in record:
            return record
        record.update(
            totals=totals,
            median_total=statistics.median(totals),
            per_client_seconds=per_client,
            median_client=statistics.median(t for run in per_client for t in run),
            failed_calls=len(errors),
            calls=clients * repeats,
            call_errors=sorted(set(errors))[:5],
        )
        self.log(f"  median total {record['median_total']:.3f}s of {[round(t, 3) for t in totals]}")
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

    def _collect(
        self, readers: list[LineReader], srv: Server, limit: float
    ) -> list[dict[str, Any]]:
        """The concurrent calls' results. A server that uses no CPU for
        HANG_SECONDS while calls are unanswered is deadlocked; one still
        spinning after ``limit`` seconds is livelocked: either way the case
        fails then rather than hang the run."""
        results: list[dict[str, Any] | None] = [None] * len(readers)
        started = last_busy = time.monotonic()
        last_cpu = srv.cpu_seconds() or 0.0
        while any(r is None for r in results):
            for i, reader in enumerate(readers):
                if results[i] is None:
                    try:
                        results[i] = json.loads(reader.expect("RESULT", 0.5))
                    except TimeoutError:
                        pass
            now, cpu = time.monotonic(), srv.cpu_seconds() or 0.0
            if cpu - last_cpu > 0.05:
                last_cpu, last_busy = cpu, now
            pending = sum(r is None for r in results)
            if pending and now - last_busy > HANG_SECONDS:
                raise TimeoutError(
                    f"the server hung: no CPU used for {HANG_SECONDS}s "
                    f"with {pending} of {len(readers)} calls unanswered"
                )
            if pending and now - started > limit:
                raise TimeoutError(
                    f"the server hung: {pending} of {len(readers)} calls unanswered after "
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
        big_case = f"rows:{self.args.latency_rows}"
        small_case = f"rows:{LATENCY_SMALL_ROWS}"
        tag = f"{store}-latency-{mode}"
        record: dict[str, Any] = {
            "store": store,
            "case": big_case,
            "case_label": case_label(big_case),
            "mode": mode,
            "big_rows": self.args.latency_rows,
            "small_rows": LATENCY_SMALL_ROWS,
            "repeats": repeats,
        }
        self.log(
            f"{store}: {size_label(LATENCY_SMALL_ROWS)}-row latency, idle and with a "
            f"{size_label(self.args.latency_rows)}-row retrieval in flight: "
            + MODES[mode].description
        )
        big, big_reader = self._worker(
            [*self._client_argv(big_mode, store, big_case, repeats), "--sync"], f"{tag}-big.log"
        )
        small, small_reader = self._worker(
            [*self._client_argv(small_mode, store, small_case, 2 * repeats), "--sync"],
            f"{tag}-small.log",
        )
        timeout = self.args.timeout
        try:
            with self.server(mode, store, big_case, tag) as srv:
                for proc, reader in ((big, big_reader), (small, small_reader)):
                    _send(proc, str(srv.port))  # warm up one at a time
                    reader.expect("READY", timeout)
                idle, busy, in_flight, triggers, errors = [], [], [], [], []
                ended_first: list[bool] = []
                for repeat in range(repeats):
                    if repeat:
                        small_reader.expect("READY", timeout)
                    _send(small, "go")
                    idle.append(_checked(json.loads(small_reader.expect("RESULT", timeout))))
                for repeat in range(repeats):
                    small_reader.expect("READY", timeout)
                    if repeat:  # its first READY came with the warm-up
                        big_reader.expect("READY", timeout)
                    _send(big, "go")
                    big_reader.expect("CALLING", timeout)
                    triggers.append(self._wait_busy(big_reader, big_mode))
                    _send(small, "go")
                    small_call = json.loads(small_reader.expect("RESULT", timeout))
                    big_call = json.loads(big_reader.expect("RESULT", timeout))
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
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
            self.log(f"  FAILED: {record['error']} (logs in {self.logs})")
            return record
        finally:
            _finish(big)
            _finish(small)
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
            record["error"] = f"every call under load failed: {errors[0]}"
            self.log(f"  FAILED: {record['error']}")
            return record
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

    def _wait_busy(self, reader: LineReader, mode: str) -> str:
        """Wait until the large retrieval is streaming, or ``--busy-delay``
        seconds; says which came first."""
        if mode != "flightlab-stream":
            time.sleep(self.args.busy_delay)
            return "delay"
        try:
            reader.expect("FIRST_BATCH", self.args.busy_delay)
            return "first batch"
        except TimeoutError:
            return "delay"

    def run_loopback(self, case: str, repeats: int) -> dict[str, Any]:
        record: dict[str, Any] = {"case": case, "case_label": case_label(case), "repeats": repeats}
        self.log(f"Flight loopback ceiling, a {case_label(case)} result")
        repo = self.repo(self.args.stores[0], case)
        tag = f"loopback-{case.replace(':', '')}"
        try:
            with Server(
                "loopback",
                None,
                self.logs / f"{tag}-server.log",
                ["--case", case, "--repo", str(repo)],
            ) as srv:
                argv = ["loopback-client", "--port", str(srv.port), "--repeats", str(repeats)]
                proc, reader = self._worker(argv, tag + ".log")
                try:
                    answer = self._result(reader, tag + ".log")
                finally:
                    _finish(proc)
                record["server_peak_rss"] = srv.peak_rss()
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
            self.log(f"  FAILED: {record['error']}")
            return record
        times = [c["seconds"] for c in answer["calls"]]
        record.update(
            times=times,
            median=statistics.median(times),
            result_rows=answer["calls"][-1]["rows"],
            result_bytes=answer["calls"][-1]["bytes"],
        )
        record["gb_per_second"] = record["result_bytes"] / record["median"] / 1e9
        self.log(f"  median {record['median']:.3f}s, {record['gb_per_second']:.2f} GB/s")
        return record

    # --- the run -------------------------------------------------------------------

    def server(self, mode: str, store: str, case: str, tag: str) -> Server:
        kind, engine = MODES[mode].server, MODES[mode].engine
        extra = []
        if kind == "flightlab":
            # --flightlab-args come last, so they can override the engine.
            extra = ["--engine", engine, *self.args.flightlab_args]
        log = self.logs / f"{tag}-server.log"
        return Server(kind, self.repo(store, case), log, extra_args=extra)

    def repo(self, store: str, case: str) -> Path:
        return self.repos[store, "mnist" if case == "mnist" else "rows"]

    def cases_for(self, store: str) -> list[str]:
        cases = [f"rows:{n}" for n in self.args.sizes]
        if self.args.mnist:
            if store != "file" or self.args.mnist_file:
                cases.append("mnist")
        return cases

    def run(self) -> dict[str, Any]:
        args = self.args
        load_before = os.getloadavg()
        self.log(f"preparing the data and repos under {self.repos_root}")
        self.repos = datagen.build_repos(
            self.repos_root, tuple(args.stores), with_mnist=args.mnist, log=self.log
        )
        if args.mnist and "file" in args.stores and not args.mnist_file:
            self.note(
                "MNIST on the file (dask) store is skipped: one retrieval takes ~14 min there "
                "(~2 s on duckdb); pass --mnist-file to include it (it then runs 1 repeat)"
            )
        for store in args.stores:
            for case in self.cases_for(store):
                repeats = 1 if (case == "mnist" and store == "file") else args.repeats
                for mode in args.modes:
                    if store in MODE_STORES.get(mode, (store,)):
                        self.results.append(self.run_mode(store, case, mode, repeats))
            if args.clients > 0:
                case = f"rows:{args.concurrency_rows}"
                for mode in CONCURRENT_MODES:
                    self.concurrency.append(self.run_concurrent(store, case, mode, args.repeats))
            if args.latency and store in args.latency_stores:
                for mode in LATENCY_MODES:
                    self.latency.append(self.run_latency(store, mode, args.repeats))
        if args.loopback:
            cases = {case for store in args.stores for case in self.cases_for(store)}
            for case in sorted(cases, key=_case_order):
                self.loopback.append(self.run_loopback(case, args.repeats))
        report.add_ratios(self.results)
        duration = time.perf_counter() - self.started
        document = {
            "meta": {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "duration_seconds": duration,
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "args": {k: v for k, v in vars(args).items()},
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
                    for name in ("feast", "pyarrow", "duckdb", "dask", "pandas", "flightlab")
                },
                "data": {
                    "user_stats_rows": datagen.USERS * datagen.ROWS_PER_USER,
                    "users": datagen.USERS,
                    "features": list(datagen.FEATURES),
                    "mnist_images": 70_000,
                    "mnist_features": len(mnist.feature_refs()),
                },
                "modes": {mode: MODES[mode].description for mode in MODES},
            },
            "results": self.results,
            "concurrency": self.concurrency,
            "latency": self.latency,
            "loopback": self.loopback,
            "notes": self.notes,
        }
        document["targets"] = evaluate_targets(document)
        return document


def _checked(call: dict[str, Any]) -> dict[str, Any]:
    """A --sync call's result; a failed call fails the measurement."""
    if "error" in call:
        raise RuntimeError(f"a call failed: {call['error']}")
    return call


def _last_error(log: Path) -> str:
    """The last line of a child's log (its exception, when it died of one)."""
    try:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "empty log"


def _send(worker: subprocess.Popen, line: str) -> None:
    worker.stdin.write(line + "\n")
    worker.stdin.flush()


def _finish(worker: subprocess.Popen) -> None:
    """Close a worker's stdin (which ends it if it waits there) and reap it."""
    try:
        worker.stdin.close()
    except OSError:
        pass
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def _case_order(case: str) -> tuple[int, int]:
    return (1, 0) if case == "mnist" else (0, int(case.split(":")[1]))


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Benchmark flightlab against local retrieval and Feast's own offline server.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 1k and 10k rows, 1 repeat, no MNIST, 10k-row concurrent clients",
    )
    parser.add_argument("--sizes", help="entity rows, comma-separated (default 10k,100k,1M)")
    parser.add_argument(
        "--stores", default="duckdb,file", help="offline stores (default duckdb,file)"
    )
    parser.add_argument("--repeats", type=int, help="timed calls per measurement (default 3)")
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"modes to run (default {','.join(MODES)})"
    )
    parser.add_argument(
        "--mnist",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="include the full MNIST retrieval (default: yes, except with --quick)",
    )
    parser.add_argument(
        "--mnist-file",
        action="store_true",
        help="also run MNIST on the file (dask) store: ~14 min per retrieval, 1 repeat",
    )
    parser.add_argument(
        "--clients", type=int, default=4, help="concurrent clients per server (0: skip)"
    )
    parser.add_argument(
        "--concurrency-rows", help="entity rows per concurrent client (default 100k)"
    )
    parser.add_argument(
        "--latency",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure a 1k-row retrieval's latency, idle and with a large one in flight "
        "(default: yes)",
    )
    parser.add_argument(
        "--latency-rows", help="entity rows of the large retrieval in flight (default 1M)"
    )
    parser.add_argument(
        "--latency-stores", default="duckdb", help="stores to measure latency on (default duckdb)"
    )
    parser.add_argument(
        "--busy-delay",
        type=float,
        default=1.0,
        help="seconds into the large retrieval to start the small one at the latest "
        "(default 1; sooner when the large one's first batch arrives)",
    )
    parser.add_argument(
        "--loopback",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the raw Flight loopback ceiling (default: yes)",
    )
    parser.add_argument(
        "--timeout", type=float, default=7200, help="seconds one worker may take (default 7200)"
    )
    parser.add_argument(
        "--concurrency-timeout",
        type=float,
        help="seconds the concurrent clients' calls may take before the server is "
        "recorded as hung (default: 20x the calls' one-after-the-other time, at least "
        "60; a server idle for 30s with calls unanswered is recorded as hung at once)",
    )
    parser.add_argument(
        "--flightlab-args",
        default="",
        help="extra arguments for `flightlab serve_offline`, e.g. '--workers 1'",
    )
    parser.add_argument(
        "--out",
        default=str(ROOT / "out" / "benchmark"),
        help="output folder (default out/benchmark)",
    )
    args = parser.parse_args(argv)
    if args.sizes:
        args.sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    else:
        args.sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.mnist is None:
        args.mnist = not args.quick
    if args.concurrency_rows:
        args.concurrency_rows = parse_size(args.concurrency_rows)
    else:
        args.concurrency_rows = 10_000 if args.quick else 100_000
    if args.latency_rows:
        args.latency_rows = parse_size(args.latency_rows)
    else:
        args.latency_rows = 100_000 if args.quick else 1_000_000
    args.latency_stores = [s.strip() for s in args.latency_stores.split(",") if s.strip()]
    args.flightlab_args = shlex.split(args.flightlab_args)
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for store in args.stores:
        if store not in datagen.STORES:
            parser.error(f"unknown store {store!r}; choose from {', '.join(datagen.STORES)}")
    for mode in args.modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Benchmark(args)
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
