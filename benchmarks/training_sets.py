"""Training sets as server objects: reuse, export and the shared connection, measured.

    .venv/bin/python benchmarks/training_sets.py            # 1M entity rows, 10M-row source
    .venv/bin/python benchmarks/training_sets.py --quick    # 100k on 1M: a smoke run

On a generated repo (``flightlab.testing.faults.large``: one feature view of six
features, the source as one parquet file), against ``flightlab serve_offline``
in a process of its own, from this process with flightlab's client:

- **reuse**: the same retrieval twice; the first is computed, the second
  answered from the kept result. The baseline is the cost of moving its rows
  alone, measured in the same run: a bare Arrow Flight server in a process of
  its own takes the entity rows (do_put) and sends the first call's result
  back (do_get), alternated with the kept answer (medians of 15 each).
  Targets: second <= 0.2 x first, and <= 1.5 x moving its rows.
- **export**: ``export_retrieval`` of ``--export-rows`` entity rows (10M):
  rows/s and the server's peak RSS growth, against a streamed read of the same
  request (``to_arrow_batches``, nothing kept).
- **shards**: the reuse case's rows in ``--shards`` (4) shards from one upload,
  read at once by as many threads, against the same rows on one stream (no
  target: each shard reads the source window again, as partitions do).
- **connection reuse**: 20 retrievals of 1,000 entity rows (on a 100k-row
  source) on one client against 20 clients (a new connection, handshake and
  version exchange each): the ratio.

It prints MET/MISSED lines and writes ``out/benchmark/training_sets.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
SMALL_ROWS = 1_000
SMALL_SOURCE_ROWS = 100_000
# Alternated measures of the kept answer and of the bare move of its rows.
KEPT_REPEATS = 15


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if args.loopback_server:
        return _serve_loopback(Path(args.loopback_server))
    from flightlab.testing.faults.large import create_large_repo

    work = Path(tempfile.mkdtemp(prefix="flightlab-training-sets-"))
    log(f"generating a {args.source_rows:,}-row source in {work}")
    repo = create_large_repo(work / "repo", args.source_rows)
    results = {"arguments": vars(args)}
    with _server(repo, work) as server:
        results["reuse"] = _reuse(repo, server, args.rows, work, args.repeats)
        results["shards"] = _shards(repo, server, args.rows, args.shards)
    results["export"] = _export(repo, work, args.export_rows, args.memory_limit)
    # Small calls on a small source: what the connection costs shows.
    small = create_large_repo(work / "small", SMALL_SOURCE_ROWS)
    with _server(small, work) as server:
        results["connections"] = _connections(small, server, args.small_calls)
    _report(results)
    out = ROOT / "out" / "benchmark"
    out.mkdir(parents=True, exist_ok=True)
    (out / "training_sets.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"wrote {out / 'training_sets.json'}")
    return 0


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k rows on a 1M-row source")
    parser.add_argument("--rows", type=int, help="entity rows of the reuse case (1M)")
    parser.add_argument("--source-rows", type=int, help="rows of the source (10M)")
    parser.add_argument("--export-rows", type=int, help="entity rows exported (10M)")
    parser.add_argument("--small-calls", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shards", type=int, default=4, help="workers of the shards case")
    parser.add_argument("--memory-limit", default="1GB", help="the export's engine memory limit")
    parser.add_argument("--loopback-server", help=argparse.SUPPRESS)  # the baseline's child
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    args.rows = args.rows or 1_000_000 // scale
    args.source_rows = args.source_rows or 10_000_000 // scale
    args.export_rows = args.export_rows or 10_000_000 // scale
    return args


def log(message: str) -> None:
    print(f"[training_sets {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _server(repo: Path, work: Path, *options: str):
    from flightlab.testing.processes import running_server, serve_offline_command

    command = serve_offline_command(
        repo, "--export-location", str(work / "exports"), "--max-entity-rows", "100000000",
        *options,
    )  # fmt: skip
    return running_server(command, log=work / "server.log")


def _timed(call: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    value = call()
    return time.perf_counter() - started, value


# --- reuse ------------------------------------------------------------------------------


def _reuse(repo: Path, server, rows: int, work: Path, repeats: int) -> dict:
    """Each round a new request, computed then answered from the kept result;
    then the last request's kept answer and the bare move of its rows,
    alternated ``KEPT_REPEATS`` times (each takes a tenth of a second, so
    a few repeats would be at the mercy of one slow moment)."""
    from flightlab.client.transport import OfflineFlightClient
    from flightlab.testing.faults.large import large_request

    first_times, second_times = [], []
    with OfflineFlightClient(server.location) as client:
        for repeat in range(repeats):
            request = large_request(repo, rows, seed=11 + repeat)  # a new request each round
            seconds, result = _timed(lambda r=request: client.fetch(r))
            first_times.append(seconds)
            second_times.append(_timed(lambda r=request: client.fetch(r))[0])
            log(
                f"reuse round {repeat + 1}: computed {seconds:.2f} s, kept {second_times[-1]:.2f} s"
            )
        pq.write_table(result, work / "result.parquet")
        kept_times, moving_times = [], []
        with _moving(request.entity_df, work / "result.parquet") as move:
            for _ in range(KEPT_REPEATS):
                kept_times.append(_timed(lambda r=request: client.fetch(r))[0])
                moving_times.append(_timed(move)[0])
        log(f"kept {statistics.median(kept_times):.3f} s, moving "
            f"{statistics.median(moving_times):.3f} s (medians of {KEPT_REPEATS})")  # fmt: skip
        stats = client.stats()["result_reuse"]
    return {
        "rows": rows,
        "result_bytes": result.nbytes,
        "first_median": statistics.median(first_times),
        "second_median": statistics.median(kept_times),
        "moving_median": statistics.median(moving_times),
        "server_reuse": stats,
    }


@contextmanager
def _moving(entity_rows: pa.Table, result_path: Path) -> Iterator[Callable[[], None]]:
    """A call that sends the entity rows to a bare Flight server (a process of
    its own) and gets the result back, on loopback: the floor of any answer."""
    from flightlab.testing.processes import running_server

    command = [sys.executable, str(Path(__file__).resolve()), "--loopback-server", str(result_path)]
    with running_server(command) as loopback:
        client = flight.FlightClient(loopback.location)

        def move() -> None:
            descriptor = flight.FlightDescriptor.for_command(b"rows")
            writer, _ = client.do_put(descriptor, entity_rows.schema)
            writer.write_table(entity_rows, max_chunksize=65_536)
            writer.close()
            client.do_get(flight.Ticket(b"result")).read_all()

        try:
            yield move
        finally:
            client.close()


class _Loopback(flight.FlightServerBase):
    def __init__(self, result: pa.Table):
        super().__init__("grpc://127.0.0.1:0")
        self._result = result

    def do_put(self, context, descriptor, reader, writer):
        reader.read_all()

    def do_get(self, context, ticket):
        return flight.RecordBatchStream(self._result, options=None)


def _serve_loopback(result_path: Path) -> int:
    result = pq.read_table(result_path)
    with _Loopback(result) as server:
        # running_server waits for the line flightlab's own server prints.
        print(f"flightlab serving grpc+tcp://127.0.0.1:{server.port}", flush=True)
        server.serve()
    return 0


# --- export -------------------------------------------------------------------------------


def _export(repo: Path, work: Path, rows: int, memory_limit: str) -> dict:
    """An export and a streamed read of the same request, each on a server of
    its own (a fresh process: its RSS growth is that call's), with the same
    engine memory limit."""
    from flightlab.client.transport import OfflineFlightClient
    from flightlab.testing.faults.large import large_request
    from flightlab.testing.processes import current_rss, peak_rss, reset_peak_rss
    from flightlab.wire import protocol

    request = large_request(repo, rows, seed=5)
    figures: dict = {"rows": rows, "memory_limit": memory_limit}
    calls = {
        "streamed": lambda client: sum(b.num_rows for b in client.iter_batches(request)),
        "export": lambda client: client.run_action(protocol.ExportRetrieval(retrieval=request)),
    }
    for name, call in calls.items():
        limit = ("--engine-memory-limit", memory_limit, "--reuse-bytes", "0")
        with _server(repo, work, *limit) as server, OfflineFlightClient(server.location) as client:
            client.stats()  # connected, the server's imports done
            before = current_rss(server.pid)
            reset_peak_rss(server.pid)
            seconds, answer = _timed(lambda c=client, f=call: f(c))
            growth = (peak_rss(server.pid) or 0) - (before or 0)
        figures[name] = {"seconds": seconds, "rows_per_second": rows / seconds,
                         "server_rss_growth": growth}  # fmt: skip
        if name == "export":
            figures[name]["files"] = len(answer["files"])
        log(f"{name}: {rows / seconds:,.0f} rows/s, server +{growth / 2**20:,.0f} MB")
    return figures


# --- connections --------------------------------------------------------------------------


def _connections(repo: Path, server, calls: int) -> dict:
    from flightlab.client.transport import OfflineFlightClient
    from flightlab.testing.faults.large import large_request

    # Computed each time: the server's kept results would hide the join.
    request = dataclasses.replace(large_request(repo, SMALL_ROWS, seed=17), reuse=False)

    def one_client() -> None:
        with OfflineFlightClient(server.location) as client:
            for _ in range(calls):
                client.fetch(request)

    def client_per_call() -> None:
        for _ in range(calls):
            with OfflineFlightClient(server.location) as client:
                client.fetch(request)

    one_client()  # warm
    shared = min(_timed(one_client)[0] for _ in range(3))
    fresh = min(_timed(client_per_call)[0] for _ in range(3))
    log(f"{calls} calls: one connection {shared:.2f} s, one each {fresh:.2f} s")
    return {"calls": calls, "shared_seconds": shared, "per_call_seconds": fresh}


# --- shards --------------------------------------------------------------------------------


def _shards(repo: Path, server, rows: int, count: int) -> dict:
    """One upload, ``count`` shards read at once by as many threads (workers
    of a training job), against the same rows on one stream; nothing kept."""
    from concurrent.futures import ThreadPoolExecutor

    from flightlab.client.transport import OfflineFlightClient
    from flightlab.testing.faults.large import large_request
    from flightlab.wire.selection import RowSelection

    whole = dataclasses.replace(large_request(repo, rows, seed=23), reuse=False)
    sharded = RowSelection(keys=("user_id",), seed=1, shards=count).to_json()
    with OfflineFlightClient(server.location) as client:

        def read_shards() -> int:
            endpoints = client.endpoints(dataclasses.replace(whole, selection=sharded))

            def read(endpoint) -> int:
                with client.open_endpoint(endpoint) as reader:
                    return reader.read_all().num_rows

            with ThreadPoolExecutor(len(endpoints)) as workers:
                return sum(workers.map(read, endpoints))

        one_stream = [_timed(lambda: client.fetch(whole).num_rows) for _ in range(3)]
        in_shards = [_timed(read_shards) for _ in range(3)]
    figures = {
        "rows": rows,
        "shards": count,
        "one_stream_seconds": min(t for t, _ in one_stream),
        "shards_seconds": min(t for t, _ in in_shards),
        "rows_alike": {n for _, n in one_stream} == {n for _, n in in_shards},
    }
    log(f"{count} shards {figures['shards_seconds']:.2f} s, one stream "
        f"{figures['one_stream_seconds']:.2f} s")  # fmt: skip
    return figures


# --- report -------------------------------------------------------------------------------


def _report(results: dict) -> None:
    reuse, export, connections = results["reuse"], results["export"], results["connections"]
    first, second, moving = reuse["first_median"], reuse["second_median"], reuse["moving_median"]
    print(f"Reuse: {reuse['rows']:,} entity rows, a {reuse['result_bytes'] / 1e6:,.0f} MB result")
    print(f"  computed {first:.2f} s; from the kept result {second:.2f} s; "
          f"moving its rows alone {moving:.2f} s")  # fmt: skip
    _target("second call <= 0.2 x the first", second / first, 0.2)
    _target("second call <= 1.5 x moving its rows alone", second / moving, 1.5)
    shards = results["shards"]
    ratio = shards["one_stream_seconds"] / shards["shards_seconds"]
    print(f"Shards: {shards['rows']:,} entity rows in {shards['shards']} shards read at once, "
          f"{shards['shards_seconds']:.2f} s; one stream {shards['one_stream_seconds']:.2f} s: "
          f"{ratio:.2f} x its rows/s (same rows: {shards['rows_alike']})")  # fmt: skip
    print(f"Export: {export['rows']:,} entity rows, engine memory limit {export['memory_limit']}")
    for name in ("streamed", "export"):
        figures = export[name]
        print(f"  {name}: {figures['rows_per_second']:,.0f} rows/s, server RSS "
              f"+{figures['server_rss_growth'] / 2**20:,.0f} MB")  # fmt: skip
    ratio = export["export"]["rows_per_second"] / export["streamed"]["rows_per_second"]
    print(f"  export / streamed read: {ratio:.2f} x the rows/s")
    shared, each = connections["shared_seconds"], connections["per_call_seconds"]
    print(
        f"Connections: {connections['calls']} small calls, one connection {shared:.2f} s "
        f"vs one each {each:.2f} s: {each / shared:.2f} x"
    )


def _target(label: str, ratio: float, bound: float) -> None:
    print(f"  {'MET' if ratio <= bound else 'MISSED'}: {label} ({ratio:.3f}, bound {bound})")


if __name__ == "__main__":
    sys.exit(main())
