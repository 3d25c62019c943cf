"""The full MNIST retrieval on Feast's offline stores, local and through flightlab (issue 12).

    .venv/bin/python benchmarks/mnist_backends.py                  # spark, all 70,000 images
    .venv/bin/python benchmarks/mnist_backends.py --rows 2000      # a smoke run
    .venv/bin/python benchmarks/mnist_backends.py --backends spark duckdb --repeats 2

What the MNIST demo's client notebook times, on a repo per backend: the demo's
feature service (the 28 ``Array(Float32)`` pixel rows, label and split of the
``mnist`` view) for images ``0..rows-1`` as of ``AS_OF``,

- ``local``: ``FeatureStore(repo).get_historical_features(...).to_arrow()`` in this process;
- ``remote``: the same through a ``flightlab serve_offline`` child process on the
  repo and a client repo (``type: flightlab.client.RemoteOfflineStore``).

Backends: ``spark`` (the demo's definitions with ``SparkSource`` over the same
parquet files, Feast's ``spark`` store in local mode with the sample repo's
``spark_conf``: ``local[2]``, UTC session time zone) and ``duckdb`` (the demo's
own repo). One small retrieval on each side first, not timed, starts what a
first call starts (Spark's JVM and session, in this process and in the server).
Calls are interleaved (local, remote, local, ...). The remote rows must equal
the local ones (sorted by image id: ids, timestamps, every pixel, labels,
splits), and the local ones the shipped MNIST.

Everything is written under ``out/mnist_backends/`` (the repos, the server logs,
``results.json``); the process works in that folder, so whatever Spark leaves
in its working directory lands there too. Progress goes to stderr, the table
to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from feast import FeatureStore  # noqa: E402
from paths import MNIST_NPZ, MNIST_REPO, ROOT  # noqa: E402
from procs import Server  # noqa: E402

from flightlab import mnist  # noqa: E402
from flightlab.mnist.postgres_repo import _FILE_SOURCES, DEFINITIONS_FILE  # noqa: E402
from flightlab.notebook.plots import time_calls  # noqa: E402
from flightlab.testing.backend_repos import (  # noqa: E402
    FILE_REGISTRY_YAML,
    SPARK_STORE_YAML,
    repo_yaml,
)

OUT = ROOT / "out" / "mnist_backends"
BACKENDS = ("spark", "duckdb")
WARM_UP_ROWS = 10
SPARK_DRIVER_MEMORY = "6g"

_SPARK_IMPORT = (
    "from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource\n"
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the repos ------------------------------------------------------------------------


def spark_definitions() -> str:
    """The committed definitions, each FileSource a SparkSource over the same parquet."""
    text = (MNIST_REPO / DEFINITIONS_FILE).read_text()
    for file_source in _FILE_SOURCES:
        if file_source not in text:
            raise RuntimeError(f"{DEFINITIONS_FILE} changed: update {Path(__file__).name}")
        spark_source = file_source.replace(
            "FileSource(", 'SparkSource(\n    file_format="parquet",', 1
        )
        text = text.replace(file_source, spark_source)
    anchor = "from feast.types import"
    return text.replace(anchor, _SPARK_IMPORT + anchor, 1)


def create_spark_mnist_repo(repo: Path, table: pa.Table) -> Path:
    """The demo's repo on Feast's spark store: its sources are the same parquet
    files (microsecond timestamps, which Spark reads), registry a file."""
    mnist.write_feature_repo(repo, MNIST_REPO)
    # The sample repo's 1 GB driver runs out of heap collecting 230 MB of arrays
    # (measured: java.lang.OutOfMemoryError, "result lost from block manager").
    if "spark.driver.memory: 1g" not in SPARK_STORE_YAML:
        raise RuntimeError("SPARK_STORE_YAML changed: update the driver memory here")
    store_yaml = SPARK_STORE_YAML.replace(
        "spark.driver.memory: 1g", f"spark.driver.memory: {SPARK_DRIVER_MEMORY}"
    )
    (repo / "feature_store.yaml").write_text(
        repo_yaml(FILE_REGISTRY_YAML, store_yaml, project=mnist.PROJECT)
    )
    (repo / DEFINITIONS_FILE).write_text(spark_definitions())
    mnist.write_source_data(repo, table)
    mnist.apply(repo)
    return repo


def create_repo(backend: str, repo: Path, table: pa.Table) -> Path:
    if repo.exists():
        shutil.rmtree(repo)
    if backend == "spark":
        return create_spark_mnist_repo(repo, table)
    mnist.write_feature_repo(repo, MNIST_REPO)  # the committed repo: duckdb
    mnist.write_source_data(repo, table)
    mnist.apply(repo)
    return repo


# --- one backend --------------------------------------------------------------------


def measure(backend: str, data: mnist.MnistData, repeats: int) -> dict[str, Any]:
    rows = len(data)
    folder = OUT / f"{backend}-{rows}"
    log(f"{backend}: writing and applying the repo at {folder / 'server'}")
    begun = time.perf_counter()
    repo = create_repo(backend, folder / "server", mnist.feature_table(data))
    log(f"{backend}: repo ready in {time.perf_counter() - begun:.1f} s")

    local = FeatureStore(repo_path=str(repo))
    service = local.get_feature_service(mnist.FEATURE_SERVICE)
    entity_df = mnist.entity_frame(count=rows)
    warm_df = mnist.entity_frame(count=min(rows, WARM_UP_ROWS))

    server_log = folder / "server.log"
    log(f"{backend}: starting flightlab serve_offline (log {server_log})")
    with Server("flightlab", repo, server_log) as server:
        log(f"{backend}: serving on port {server.port} (started in {server.started_in:.1f} s)")
        client = mnist.write_client_repo(folder / "client", "127.0.0.1", server.port, repo)
        remote = FeatureStore(repo_path=str(client))
        stores = {"local": local, "remote": remote}

        for side, store in stores.items():
            begun = time.perf_counter()
            store.get_historical_features(warm_df, features=service).to_arrow()
            took = time.perf_counter() - begun
            log(f"{backend}: warm-up {side} ({len(warm_df)} rows) {took:.1f} s")

        results: dict[str, pa.Table] = {}

        def retrieval(side: str) -> Callable[[], None]:
            def call() -> None:
                log(f"{backend}: {side} retrieval of {rows:,} images ...")
                begun = time.perf_counter()
                results[side] = (
                    stores[side].get_historical_features(entity_df, features=service).to_arrow()
                )
                log(
                    f"{backend}: {side} {time.perf_counter() - begun:.2f} s, "
                    f"{results[side].num_rows:,} rows, {results[side].nbytes / 2**20:.0f} MiB"
                )

            return call

        timings = time_calls({side: retrieval(side) for side in stores}, repeat=repeats)

    try:
        comparison = mnist.compare_retrievals(results["local"], results["remote"])
        equal, differences = comparison.equal, list(comparison.differences)
    except ValueError as exc:  # e.g. rows without pixels: no images to compare
        equal, differences = False, [f"{type(exc).__name__}: {exc}"]
    try:
        shipped: bool | str = mnist.matches_data(results["local"], data)
    except ValueError as exc:
        shipped = f"{type(exc).__name__}: {exc}"
    log(
        f"{backend}: remote == local: {equal} ({'; '.join(differences) or 'no differences'}); "
        f"local == shipped MNIST: {shipped}"
    )
    return {
        "backend": backend,
        "rows": results["local"].num_rows,
        "remote_rows": results["remote"].num_rows,
        "local_s": timings["local"],
        "remote_s": timings["remote"],
        "remote_equals_local": equal,
        "differences": differences,
        "local_equals_shipped": shipped,
        "local_schema": str(results["local"].schema.field(mnist.FEATURES[0]).type),
        "remote_schema": str(results["remote"].schema.field(mnist.FEATURES[0]).type),
    }


# --- the table ----------------------------------------------------------------------


def seconds(values: list[float]) -> str:
    text = f"{statistics.median(values):.2f}"
    return text if len(values) == 1 else f"{text} (best {min(values):.2f})"


def table(results: list[dict[str, Any]]) -> str:
    header = ("backend", "local s", "remote s", "remote/local", "rows", "remote == local")
    lines = [header]
    for r in results:
        ratio = statistics.median(r["remote_s"]) / statistics.median(r["local_s"])
        lines.append(
            (
                r["backend"],
                seconds(r["local_s"]),
                seconds(r["remote_s"]),
                f"{ratio:.2f}",
                f"{r['rows']:,}",
                "yes" if r["remote_equals_local"] else "NO: " + "; ".join(r["differences"]),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backends", nargs="+", choices=BACKENDS, default=["spark"], help="default: spark"
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per side (default 1)")
    parser.add_argument(
        "--rows", type=int, default=70_000, help="images 0..rows-1 (default all 70,000)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or not 1 <= args.rows <= 70_000:
        parser.error("--repeats must be >= 1 and --rows within 1..70000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    os.chdir(OUT)  # Spark may leave folders (spark-warehouse...) in its working directory
    data = mnist.load_mnist(MNIST_NPZ).head(args.rows)
    log(f"{len(data):,} images, backends {args.backends}, {args.repeats} timed call(s) per side")
    results = [measure(backend, data, args.repeats) for backend in args.backends]
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(table(results))
    print(f"load average (1, 5, 15 min) at the end: {load}; {os.cpu_count()} cores")
    (OUT / "results.json").write_text(
        json.dumps(
            {"args": vars(args), "load_average": os.getloadavg(), "results": results}, indent=1
        )
        + "\n"
    )
    log(f"wrote {OUT / 'results.json'}")
    ok = all(r["remote_equals_local"] and r["local_equals_shipped"] is True for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
