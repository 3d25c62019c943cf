"""``flightlab``: the command line, shaped like Feast's own.

    flightlab [-c REPO] serve_offline [-h HOST] [-p PORT] [--log-level LEVEL]

mirrors ``feast -c REPO serve_offline -h HOST -p PORT``, with the same
defaults (the current folder, 127.0.0.1, port 8815).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from flightlab import __version__
from flightlab.server.limits import ServerLimits


def build_parser() -> argparse.ArgumentParser:
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
        "--batch-rows",
        type=int,
        default=limits.batch_rows,
        help="rows per result batch at most (default %(default)s)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="how much to log (one line per request at info)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "serve_offline":
        limits = ServerLimits(
            workers=args.workers,
            queue_timeout=args.queue_timeout,
            staged_ttl=args.staged_ttl,
            max_staged_bytes=args.max_staged_bytes,
            max_param_bytes=args.max_param_bytes,
            max_entity_rows=args.max_entity_rows,
            batch_rows=args.batch_rows,
        )
        return serve_offline(Path(args.chdir), args.host, args.port, limits, _tls(args))
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


def serve_offline(repo: Path, host: str, port: int, limits: ServerLimits, tls=None) -> int:
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
    from flightlab.server.auth import AuthConfigError

    try:
        server = OfflineServer(repo, host=host, port=port, limits=limits, tls=tls).start()
    except AuthConfigError as exc:
        print(f"flightlab: {exc}", file=sys.stderr)
        return 2
    # The one line a script waits for, on stdout, with the port actually bound.
    print(f"flightlab serving {server.location}", flush=True)
    while not stop_requested.wait(0.5):
        pass
    server.stop()
    return 0
