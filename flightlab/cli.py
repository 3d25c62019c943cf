"""``flightlab``: the command line, shaped like Feast's own.

    flightlab [-c REPO] serve_offline [-h HOST] [-p PORT] [--log-level LEVEL]

mirrors ``feast -c REPO serve_offline -h HOST -p PORT``, with the same
defaults (the current folder, 127.0.0.1, port 8815). Every option can also be
set by an environment variable (``FLIGHTLAB_PORT``, ...), and the repo's
``feature_store.yaml`` by ``FEATURE_STORE_YAML_BASE64``: see
:mod:`flightlab.cli_env`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from flightlab import __version__
from flightlab.cli_engine import add_engine_arguments, engine_settings
from flightlab.cli_env import apply_env, remove_env_repos, repo_from_env
from flightlab.engine.settings import EngineSettings
from flightlab.operations.options import DEFAULT_DRAIN_SECONDS, ServiceOptions
from flightlab.server.limits import ServerLimits


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``environ``, its ``FLIGHTLAB_*`` variables set the defaults."""
    parser = argparse.ArgumentParser(
        prog="flightlab", description="A remote offline feature server for Feast."
    )
    parser.add_argument("--version", action="version", version=f"flightlab {__version__}")
    parser.add_argument(
        "-c",
        "--chdir",
        default=".",
        metavar="REPO",
        help="the Feast repo (folder with feature_store.yaml); default: the current folder",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    # -h means --host, as in `feast serve_offline`, so help is --help only.
    serve = commands.add_parser(
        "serve_offline", add_help=False, help="serve the repo's offline store over Arrow Flight"
    )
    serve.add_argument("--help", action="help", help="show this help and exit")
    serve.add_argument("-h", "--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument(
        "-p", "--port", type=int, default=8815, help="port (0 picks a free one and prints it)"
    )
    serve.add_argument("-c", "--cert", help="TLS: PEM certificate chain of the server")
    serve.add_argument("-k", "--key", help="TLS: PEM private key of the server")
    serve.add_argument(
        "--client-ca", metavar="CA", help="mTLS: PEM CA that client certificates must chain to"
    )
    limits = ServerLimits()
    serve.add_argument(
        "--workers",
        type=int,
        default=limits.workers,
        help="Feast calls run at once; more requests queue (default %(default)s)",
    )
    serve.add_argument(
        "--queue-timeout",
        type=float,
        default=limits.queue_timeout,
        metavar="SECONDS",
        help="how long a request may queue before a 'busy' error (default %(default)s)",
    )
    serve.add_argument(
        "--staged-ttl",
        type=float,
        default=limits.staged_ttl,
        metavar="SECONDS",
        help="a staged command never run expires after this (default %(default)s)",
    )
    serve.add_argument(
        "--max-staged-bytes",
        type=int,
        default=limits.max_staged_bytes,
        metavar="BYTES",
        help="cap on the bytes staged by all clients together (default %(default)s)",
    )
    serve.add_argument(
        "--max-param-bytes",
        type=int,
        default=limits.max_param_bytes,
        metavar="BYTES",
        help="cap on one parameter other than a table, e.g. a string (default %(default)s)",
    )
    serve.add_argument(
        "--max-entity-rows",
        type=int,
        default=limits.max_entity_rows,
        metavar="ROWS",
        help="cap on the entity rows of one request (default %(default)s)",
    )
    serve.add_argument(
        "--max-partitions",
        type=int,
        default=limits.max_partitions,
        metavar="N",
        help="a client reading partitions gets a large retrieval in this many streams at "
        "most (default %(default)s)",
    )
    serve.add_argument(
        "--min-partition-rows",
        type=int,
        default=limits.min_partition_rows,
        metavar="ROWS",
        help="entity rows of one partition at least; a smaller request is one stream "
        "(default %(default)s)",
    )
    serve.add_argument(
        "--reuse-bytes",
        type=int,
        default=limits.reuse_bytes,
        metavar="BYTES",
        help="recent results kept to answer identical requests again, at most this many "
        "bytes (least recently used go first); 0 keeps none (default %(default)s)",
    )
    serve.add_argument(
        "--batch-rows",
        type=int,
        default=limits.batch_rows,
        help="rows per result batch at most (default %(default)s)",
    )
    add_engine_arguments(serve)
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="how much to log (one line per request at info)",
    )
    _add_service_options(serve)
    if environ is not None:
        apply_env(parser, environ)
    return parser


def _limits(args: argparse.Namespace) -> ServerLimits:
    return ServerLimits(
        workers=args.workers,
        queue_timeout=args.queue_timeout,
        staged_ttl=args.staged_ttl,
        max_staged_bytes=args.max_staged_bytes,
        max_param_bytes=args.max_param_bytes,
        max_entity_rows=args.max_entity_rows,
        max_partitions=args.max_partitions,
        min_partition_rows=args.min_partition_rows,
        reuse_bytes=args.reuse_bytes,
        batch_rows=args.batch_rows,
    )


def _add_service_options(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--health-port",
        type=int,
        metavar="PORT",
        help="serve the gRPC health service (grpc.health.v1) on this port; default: none",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics; default: none",
    )
    serve.add_argument(
        "--advertise-location",
        metavar="URI",
        help="the URI clients fetch results from, e.g. grpc+tcp://POD_IP:8815 for a "
        "replica behind a load balancer; default: the server a client asked",
    )
    serve.add_argument(
        "--export-location",
        metavar="FOLDER_OR_URI",
        help="where to_remote_storage() writes results as parquet: a folder, or "
        "s3://BUCKET/PREFIX; default: none (exports refused)",
    )
    serve.add_argument(
        "--drain-seconds",
        type=float,
        default=DEFAULT_DRAIN_SECONDS,
        metavar="SECONDS",
        help="on SIGTERM, how long running requests may take to finish (default %(default)s)",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser(os.environ).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "serve_offline":
        try:  # out-of-range settings are the user's error: a message, not a traceback
            limits = _limits(args)
            engine = engine_settings(args)
        except ValueError as exc:
            print(f"flightlab: {exc}", file=sys.stderr)
            return 2
        service = ServiceOptions(
            health_port=args.health_port,
            metrics_port=args.metrics_port,
            advertise_location=args.advertise_location,
            export_location=args.export_location,
            drain_seconds=args.drain_seconds,
        )
        try:
            repo = repo_from_env(os.environ) or Path(args.chdir)
        except ValueError as exc:
            print(f"flightlab: {exc}", file=sys.stderr)
            return 2
        try:
            return serve_offline(repo, args.host, args.port, limits, _tls(args), service, engine)
        finally:
            remove_env_repos()  # the folder FEATURE_STORE_YAML_BASE64 was written to
    return 2


def _tls(args: argparse.Namespace):
    if not (args.cert or args.key):
        if args.client_ca:
            raise SystemExit("flightlab: --client-ca needs --cert and --key (mTLS is over TLS)")
        return None
    if not (args.cert and args.key):
        raise SystemExit("flightlab: TLS needs both --cert and --key")
    from flightlab.server import ServerTls

    return ServerTls.from_files(args.cert, args.key, args.client_ca)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def serve_offline(
    repo: Path,
    host: str,
    port: int,
    limits: ServerLimits,
    tls=None,
    service: ServiceOptions | None = None,
    engine: EngineSettings | None = None,
) -> int:
    if not (repo / "feature_store.yaml").is_file():
        print(f"flightlab: no feature_store.yaml in {repo.resolve()}", file=sys.stderr)
        return 2
    from flightlab.server import OfflineServer

    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        logging.getLogger("flightlab").info("%s received, stopping", signal.Signals(signum).name)
        stop_requested.set()

    # Before the "serving" line: a script may signal as soon as it reads it.
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    # And the threads started from here on (gRPC's among them) block them, so
    # the main thread takes them with sigtimedwait below: a signal delivered
    # to a thread busy streaming a result was seen to be lost otherwise.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    from flightlab.server.auth import AuthConfigError

    try:
        server = OfflineServer(
            repo,
            host=host,
            port=port,
            limits=limits,
            tls=tls,
            service=service,
            engine=engine,
        ).start()
    except AuthConfigError as exc:
        print(f"flightlab: {exc}", file=sys.stderr)
        return 2
    # The one line a script waits for, on stdout, with the port actually bound.
    print(f"flightlab serving {server.location}", flush=True)
    # Then, one line each, the side ports actually bound (port 0 picks them).
    if server.health_port is not None:
        print(f"flightlab health grpc://{host}:{server.health_port}", flush=True)
    if server.metrics_port is not None:
        print(f"flightlab metrics http://{host}:{server.metrics_port}/metrics", flush=True)
    while not stop_requested.is_set():
        received = signal.sigtimedwait(_STOP_SIGNALS, 0.5)
        if received is not None:
            request_stop(received.si_signo, None)
    return _drain_and_stop(server)


def _drain_and_stop(server) -> int:
    """Finish the running requests (at most --drain-seconds), then stop: exit 0.

    Should stopping itself hang past the drain time (a join Feast cannot
    interrupt), the process exits anyway: the orchestrator would kill it.
    """
    stopper = threading.Thread(target=server.drain_and_stop, name="flightlab-drain")
    stopper.start()
    stopper.join(server.service_options.drain_seconds + 15)
    if stopper.is_alive():
        logging.getLogger("flightlab").error("the server did not stop in time; exiting")
        logging.shutdown()
        remove_env_repos()  # os._exit skips main's finally
        os._exit(1)
    return 0
