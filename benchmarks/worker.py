"""The benchmark's child processes: one client (or the loopback server) each.

    worker.py client --mode MODE [--store STORE] --case CASE --repo REPO [--repeats N]
        [--seed S] [--sync]
    worker.py loopback-server --case CASE --repo REPO
    worker.py loopback-client --port P --repeats N

``client`` imports Feast and builds its entity frame, reads the server's port
and process id from stdin (a line ``PORT PID``; ``0`` for the in-process
modes: so it can start while the server does), makes one untimed warm-up call
(a small frame: imports, registry, connections), then times ``--repeats``
fresh calls.
Before each call it resets its own peak RSS and the server's, so it reports
the peak of the call and how far above the pre-call RSS that peak went, for
itself and for the server. Results are one ``RESULT {json}`` line on stdout.

With ``--sync`` (concurrent clients, the latency measurement) it prints
``READY`` after its warm-up and waits for a line on stdin before each call,
prints ``CALLING`` as the call starts (and ``FIRST_BATCH`` when a streamed
call's first batch is in hand), and a ``RESULT`` line per call; a failed call
is reported, not raised.

Modes: ``local`` (in-process ``get_historical_features``), ``engine-limit``
(in-process, one plain DuckDB ASOF join: benchmarks/limit.py; on the postgres
store, ADBC's fetch of each window and one DuckDB ASOF join:
benchmarks/postgres.py), ``engine`` (flightlab's engine in-process, no server,
no wire), ``flightlab``
(``flightlab.client.RemoteOfflineStore``, ``to_arrow``), ``flightlab-stream``
(the same, consuming ``to_arrow_batches(progress=...)`` batch by batch),
``flightlab-parquet`` (the same, written by ``to_parquet`` to a temporary
folder of parquet files as it streams) and ``feast-client`` (Feast's stock
``type: remote`` client).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

import datagen  # noqa: E402

from flightlab.testing import processes  # noqa: E402

CLIENT_MODES = (
    "local", "engine-limit", "engine", "flightlab", "flightlab-stream", "flightlab-parquet",
    "feast-client",
)  # fmt: skip
WARMUP_ROWS = 1_000
LOOPBACK_BATCH_ROWS = 65_536


def emit(kind: str, payload: object = None) -> None:
    line = kind if payload is None else f"{kind} {json.dumps(payload)}"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def case_frame(store: str, case: str, seed: int) -> tuple[object, list[str]]:
    """The entity frame and feature refs of ``case`` (``rows:N``, on the
    postgres store ``rows:N:VARIANT``, or ``mnist``)."""
    if case == "mnist":
        return datagen.mnist_case()
    if store == "postgres":
        import postgres

        return postgres.case_frame(case, seed)
    rows = int(case.split(":")[1])
    users = datagen.users_of(case)
    return datagen.entity_frame(rows, seed=seed, users=users), list(datagen.FEATURE_REFS)


class EngineLimit:
    """The ``engine-limit`` mode's store: ``get_historical_features`` answered
    by one plain DuckDB query (its SQL built once, before the timed calls)."""

    def __init__(self, repo: Path, memory_limit: str | None = None):
        self.repo = repo
        self.memory_limit = memory_limit
        self._queries: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}

    def get_historical_features(self, entity_df, features: list[str]):
        import limit

        key = (tuple(entity_df.columns), tuple(features))
        if key not in self._queries:
            self._queries[key] = limit.limit_query(self.repo, features, list(entity_df.columns))
        query, memory_limit = self._queries[key], self.memory_limit

        class Job:
            def to_arrow(self):
                return limit.run_limit(query, entity_df, memory_limit)

        return Job()


class InProcessEngine:
    """The ``engine`` mode's store: flightlab's engine in this process, as
    the server calls it (the references resolved as the server resolves
    them), the answer read whole."""

    def __init__(self, repo: Path):
        from feast import FeatureStore

        from flightlab.engine import Engine, EngineSettings

        self.store = FeatureStore(repo_path=str(repo))
        self.engine = Engine(EngineSettings())
        self.last_plan: str | None = None  # the postgres plan of the latest call

    def get_historical_features(self, entity_df, features: list[str]):
        from flightlab.dispatch.planning import plan_historical

        plan = plan_historical(self.store, tuple(features))
        store, engine, this = self.store, self.engine, self

        class Job:
            def to_arrow(self):
                rows = pa.Table.from_pandas(entity_df, preserve_index=False)
                stream = engine.historical(
                    store.config, plan.feature_views, plan.feature_refs, plan.on_demand_views,
                    rows, False,
                )  # fmt: skip
                if stream is None:
                    raise RuntimeError("flightlab's engine does not answer this retrieval")
                table = stream.read_all()
                last = engine.postgres.usage().last
                this.last_plan = last.plan if last else None
                return table

        return Job()


def open_store(
    mode: str, repo: Path, port: int, workdir: Path, args: argparse.Namespace | None = None
):
    """The store ``mode`` retrieves from; ``args``: the worker's options (its
    store, memory limit, offline-store settings, timestamp coercion)."""
    from feast import FeatureStore

    store = args.store if args else "duckdb"
    if mode == "engine-limit" and store == "postgres":
        import postgres

        return postgres.Limit(repo)
    if mode == "engine-limit":
        return EngineLimit(repo, args.memory_limit if args else None)
    if mode == "engine":
        return InProcessEngine(repo)
    if mode == "local":
        return FeatureStore(repo_path=str(repo))
    offline = {
        "type": "remote" if mode == "feast-client" else "flightlab.client.RemoteOfflineStore",
        "host": "127.0.0.1",
        "port": port,
        **dict(setting.split("=", 1) for setting in (args.offline_setting if args else [])),
    }
    yaml = datagen.client_repo_yaml(repo, online=workdir / "online.db", offline_store=offline)
    if args and args.no_coerce:
        # Feast then hands the entity frame over as it is, without a full copy.
        yaml += "coerce_tz_aware: false\n"
    (workdir / "feature_store.yaml").write_text(yaml)
    return FeatureStore(repo_path=str(workdir))


def retrieve(
    store, mode: str, entity_df, refs: list[str], announce: bool = False
) -> dict[str, int | None]:
    """One retrieval, start to end: the result's rows and Arrow bytes and, when
    streaming, the RSS when the first batch arrived (the entity rows are
    uploaded by then) and the peak from there to the end of the stream.
    ``announce``: print ``FIRST_BATCH`` when the first batch is in hand."""
    job = store.get_historical_features(entity_df=entity_df, features=refs)
    if mode == "flightlab-parquet":
        return _written_to_parquet(job)
    if mode != "flightlab-stream":
        table = job.to_arrow()
        plan = {"plan": store.last_plan} if getattr(store, "last_plan", None) else {}
        return {"rows": table.num_rows, "bytes": table.nbytes, **plan}
    rows = nbytes = 0
    seen: dict[str, int | None] = {}
    last = []
    for batch in job.to_arrow_batches(progress=last.append):
        if not seen:
            if announce:
                emit("FIRST_BATCH")
            seen["first_batch_rss"] = processes.current_rss()
            seen["upload_peak_rss"] = processes.peak_rss()
            processes.reset_peak_rss()
        rows += batch.num_rows
        nbytes += batch.nbytes
        del batch  # hold no batch longer than it takes to count it
        del last[:-1]
    if seen:
        seen["stream_peak_rss"] = processes.peak_rss()
    return {"rows": rows, "bytes": nbytes, **seen}


def _written_to_parquet(job) -> dict[str, int | None]:
    """The result written to a temporary folder of parquet files (removed after)."""
    last = []
    with tempfile.TemporaryDirectory(prefix="flightlab-bench-parquet-") as folder:
        files = job.to_parquet(Path(folder) / "result", progress=last.append)
        written = sum(f.stat().st_size for f in files)
    rows = last[-1].rows if last else 0
    return {"rows": rows, "bytes": last[-1].bytes if last else 0, "parquet_bytes": written}


def run_client(args: argparse.Namespace) -> None:
    entity_df, refs = case_frame(args.store, args.case, args.seed)
    if args.case == "mnist":
        warm_df = entity_df.iloc[:WARMUP_ROWS].reset_index(drop=True)
    else:  # the case's kind of rows, fewer
        warm_case = ":".join(["rows", str(WARMUP_ROWS), *args.case.split(":")[2:]])
        warm_df, _ = case_frame(args.store, warm_case, args.seed + 1)
    import feast  # noqa: F401 - the slow import, done while the server starts

    line = sys.stdin.readline().split()
    if not line:
        return
    port = int(line[0])
    server_pid = int(line[1]) if len(line) > 1 else None
    with tempfile.TemporaryDirectory(prefix="flightlab-bench-") as tmp:
        store = open_store(args.mode, Path(args.repo), port, Path(tmp), args)
        retrieve(store, args.mode, warm_df, refs)
        calls = []
        for _ in range(args.repeats):
            if args.sync:
                emit("READY")
                if not sys.stdin.readline():
                    return
            gc.collect()
            processes.reset_peak_rss()
            before = processes.current_rss()
            server = server_before(server_pid)
            if args.sync:
                emit("CALLING")
            started, t0 = time.time(), time.perf_counter()
            call: dict[str, object] = {}
            try:
                call.update(retrieve(store, args.mode, entity_df, refs, announce=args.sync))
            except Exception as exc:
                if not args.sync:
                    raise
                # A concurrent client reports its failure and carries on.
                message = str(exc).splitlines()[0].split(" Detail:")[0]
                call["error"] = f"{type(exc).__name__}: {message[:300]}"
            seconds = time.perf_counter() - t0
            peak = processes.peak_rss()
            if "upload_peak_rss" in call:  # the peak was reset at the first batch
                peak = max(peak or 0, call["upload_peak_rss"] or 0)
            call.update(
                seconds=seconds,
                start=started,
                end=started + seconds,
                rss_before=before,
                peak_rss=peak,
                **server_after(server_pid, server),
            )
            calls.append(call)
            if args.sync:
                emit("RESULT", call)
    if not args.sync:
        emit("RESULT", {"calls": calls})


def server_before(pid: int | None) -> dict[str, object]:
    """Reset the server's peak RSS before a call (the server's peak is then
    that of this call) and note its RSS; empty without a server."""
    if pid is None:
        return {}
    return {
        "server_reset": processes.reset_peak_rss(pid),
        "server_rss_before": processes.current_rss(pid),
    }


def server_after(pid: int | None, before: dict[str, object]) -> dict[str, object]:
    if pid is None:
        return {}
    return {**before, "server_call_peak_rss": processes.peak_rss(pid)}


def loopback_table(case: str, repo: Path) -> pa.Table:
    """A table with the schema and size of ``case``'s retrieval result: the
    MNIST feature rows themselves, or as many user_stats rows as asked for."""
    if case == "mnist":
        entity_df, refs = datagen.mnist_case()
        table = pq.read_table(repo / "data" / "mnist.parquet")
        columns = [*entity_df.columns, *(ref.split(":", 1)[1] for ref in refs)]
        return table.select(columns).slice(0, len(entity_df)).combine_chunks()
    import numpy as np

    rows = int(case.split(":", 1)[1])
    table = pq.read_table(datagen.user_stats_path(repo))
    picks = np.random.default_rng(5).integers(0, table.num_rows, rows)
    return table.take(pa.array(picks)).combine_chunks()


def run_loopback_server(args: argparse.Namespace) -> None:
    import pyarrow.flight as flight

    table = loopback_table(args.case, Path(args.repo))

    class Loopback(flight.FlightServerBase):
        def do_get(self, context, ticket):
            batches = table.to_batches(max_chunksize=LOOPBACK_BATCH_ROWS)
            return flight.RecordBatchStream(
                pa.RecordBatchReader.from_batches(table.schema, batches)
            )

    server = Loopback("grpc+tcp://127.0.0.1:0")
    emit(f"LISTENING {server.port}")
    server.serve()


def run_loopback_client(args: argparse.Namespace) -> None:
    import pyarrow.flight as flight

    client = flight.FlightClient(f"grpc+tcp://127.0.0.1:{args.port}")
    client.do_get(flight.Ticket(b"table")).read_all()  # warm-up
    calls = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        table = client.do_get(flight.Ticket(b"table")).read_all()
        calls.append(
            {"seconds": time.perf_counter() - t0, "rows": table.num_rows, "bytes": table.nbytes}
        )
        del table
    client.close()
    emit("RESULT", {"calls": calls})


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    parser = argparse.ArgumentParser(prog="worker.py")
    commands = parser.add_subparsers(dest="command", required=True)
    client = commands.add_parser("client")
    client.add_argument("--mode", choices=CLIENT_MODES, required=True)
    client.add_argument("--store", default="duckdb", help="the repo's offline store")
    client.add_argument("--case", required=True, help="rows:N[:VARIANT] or mnist")
    client.add_argument("--repo", required=True)
    client.add_argument("--repeats", type=int, default=3)
    client.add_argument("--seed", type=int, default=3)
    client.add_argument("--sync", action="store_true")
    client.add_argument("--memory-limit", help="the engine limit's DuckDB memory limit")
    client.add_argument(
        "--offline-setting", action="append", default=[], help="KEY=VALUE of offline_store"
    )
    client.add_argument("--no-coerce", action="store_true", help="coerce_tz_aware: false")
    server = commands.add_parser("loopback-server")
    server.add_argument("--case", required=True)
    server.add_argument("--repo", required=True, help="the repo whose data to serve")
    loop = commands.add_parser("loopback-client")
    loop.add_argument("--port", type=int, required=True)
    loop.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    {
        "client": run_client,
        "loopback-server": run_loopback_server,
        "loopback-client": run_loopback_client,
    }[args.command](args)


if __name__ == "__main__":
    main()
