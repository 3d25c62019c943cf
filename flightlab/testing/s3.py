"""A loopback S3 server for tests, benchmarks and demos: moto's server mode in a child process.

    with S3Server() as s3:                       # a free loopback port; stopped on exit
        s3.create_bucket("features")
        s3.upload_file(local_file, "features", "stats.parquet")
        s3.upload_folder(local_folder, "features", "stats/")
        s3.reset_counts()
        ...                                      # read through s3.endpoint
        s3.counts().bytes_out                    # what the server sent since the reset

The child runs moto's own WSGI application (what ``python -m moto.server``
runs: ``DomainDispatcherApplication(create_backend_app)`` on werkzeug's
threaded server) behind a middleware that counts the requests and the
response bytes it serves, so a test can prove what a reader did *not* fetch
(projection and time-range pushdown). The counters answer on two paths moto
never sees: ``GET /__flightlab/counts`` and ``POST /__flightlab/reset``.

moto checks no signature: any credentials work, but every S3 client wants
*some* (and without them the AWS SDKs walk their whole credential chain,
instance metadata included). :meth:`S3Server.client_env` gives the
variables a client process reads. ``python -m flightlab.testing.s3 --port N``
runs the server in the foreground (moto is in the ``test`` extra).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flightlab.testing.processes import free_port

ACCESS_KEY = "flightlab-test-key"
SECRET_KEY = "flightlab-test-secret"
REGION = "us-east-1"  # buckets need no LocationConstraint there
_COUNTS = "/__flightlab/counts"
_RESET = "/__flightlab/reset"
_CREDENTIALS = "/__flightlab/credentials"
_CUT = "/__flightlab/cut"
_LOG_REQUESTS = 2_000  # the last requests kept in the counters' log


@dataclass(frozen=True)
class S3Counts:
    """What the server served since it started or was last reset."""

    requests: int
    bytes_out: int  # response bodies
    gets: int
    range_gets: int  # GETs with a Range header
    log: tuple[tuple[str, str, str, str, int], ...]  # (method, path, range, status, bytes)

    def bytes_of(self, key: str) -> int:
        """Bytes served for paths ending in ``key`` (an object's key)."""
        return sum(sent for _, path, _, _, sent in self.log if path.endswith(key))


class S3Server:
    """moto's S3 server on ``host``:``port`` (a free port unless given), in a
    child process started by :meth:`start` (or ``with``) and stopped by :meth:`stop`."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, log: Path | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.log = log  # the child's stdout and stderr; dropped when None
        self.process: subprocess.Popen | None = None
        self._client: Any = None

    @property
    def endpoint(self) -> str:
        """As Feast's ``s3_endpoint_override`` takes it: ``http://HOST:PORT``."""
        return f"http://{self.host}:{self.port}"

    def client_env(self) -> dict[str, str]:
        """Environment variables for a process that reads from this server:
        credentials (any will do), the region, and no instance-metadata probe."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    # --- the process -----------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> S3Server:
        """Start the child and return once it answers (about half a second)."""
        if self.process is not None:
            raise RuntimeError(f"the S3 server on {self.endpoint} is already running")
        command = [sys.executable, "-m", __name__, "--host", self.host, "--port", str(self.port)]
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            if self.log:
                out.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(f"the S3 server exited with {code} before answering")
            try:
                self.counts()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"the S3 server did not answer on {self.endpoint}") from None
                time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; nothing if not running."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- buckets and objects (boto3) -------------------------------------------------------

    def client(self) -> Any:
        """A boto3 S3 client of this server (made once: boto3's clients are thread-safe)."""
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                region_name=REGION,
            )
        return self._client

    def create_bucket(self, bucket: str) -> None:
        self.client().create_bucket(Bucket=bucket)

    def upload_file(self, local: str | Path, bucket: str, key: str) -> str:
        """Upload one file; its ``s3://`` URI."""
        self.client().upload_file(str(local), bucket, key)
        return f"s3://{bucket}/{key}"

    def upload_folder(self, local: str | Path, bucket: str, prefix: str) -> str:
        """Upload every file below ``local`` under ``prefix`` (keeping the
        relative paths); the prefix's ``s3://`` URI."""
        client, prefix = self.client(), prefix.strip("/")
        for path in sorted(Path(local).rglob("*")):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local)}")
        return f"s3://{bucket}/{prefix}"

    def delete(self, bucket: str, key: str) -> None:
        self.client().delete_object(Bucket=bucket, Key=key)

    def check_credentials(self, check: bool = True) -> None:
        """From now on, refuse (403) every request whose access key moto's IAM
        does not know, as S3 refuses an unknown or revoked key; ``False``
        serves any again."""
        self._post(_CREDENTIALS, b"check" if check else b"any")

    def cut_reads_after(self, size: int | None) -> None:
        """From now on, drop the connection of every GET once it has sent
        ``size`` bytes of its body (a network that fails mid-transfer);
        None: send whole bodies again."""
        self._post(_CUT, b"" if size is None else str(size).encode())

    # --- counters ------------------------------------------------------------------------

    def counts(self) -> S3Counts:
        with urllib.request.urlopen(self.endpoint + _COUNTS, timeout=5) as answer:
            data = json.loads(answer.read())
        data["log"] = tuple(tuple(entry) for entry in data["log"])
        return S3Counts(**data)

    def reset_counts(self) -> None:
        self._post(_RESET, b"")

    def _post(self, path: str, body: bytes) -> None:
        request = urllib.request.Request(self.endpoint + path, body, method="POST")
        with urllib.request.urlopen(request, timeout=5) as answer:
            answer.read()


# --- the child: moto's application, counted ---------------------------------------------------


class _Counting:
    """WSGI middleware: counts the requests and response bytes of ``app``."""

    def __init__(self, app: Any):
        self.app = app
        self.lock = threading.Lock()
        self.cut_after: int | None = None
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.totals: Counter[str] = Counter()
            self.log: deque[list] = deque(maxlen=_LOG_REQUESTS)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            names = ("requests", "bytes_out", "gets", "range_gets")
            return {**{n: self.totals[n] for n in names}, "log": list(self.log)}

    def __call__(self, environ: dict, start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path in (_COUNTS, _RESET, _CREDENTIALS, _CUT):
            if path == _RESET:
                self.reset()
            elif path == _CREDENTIALS:
                _check_credentials(_request_body(environ) == b"check")
            elif path == _CUT:
                size = _request_body(environ)
                self.cut_after = int(size) if size else None
            body = json.dumps(self.snapshot() if path == _COUNTS else {}).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        status: list[str] = [""]

        def counted_start(code: str, headers: Any, exc_info: Any = None) -> Any:
            status[0] = code.split(" ", 1)[0]
            return start_response(code, headers, exc_info)

        request = (environ.get("REQUEST_METHOD", ""), path, environ.get("HTTP_RANGE", ""))
        return self._counted(self.app(environ, counted_start), request, status)

    def _counted(self, body: Any, request: tuple[str, str, str], status: list[str]) -> Any:
        sent, cut = 0, self.cut_after if request[0] == "GET" else None
        try:
            for chunk in body:
                if cut is not None and sent + len(chunk) > cut:
                    part, sent = chunk[: cut - sent], cut
                    yield part
                    # werkzeug drops the connection: the client gets a short body.
                    raise ConnectionAbortedError(f"flightlab cut {request[1]} after {cut} bytes")
                sent += len(chunk)
                yield chunk
        finally:
            if hasattr(body, "close"):
                body.close()
            method, path, ranged = request
            with self.lock:
                self.totals.update(
                    requests=1,
                    bytes_out=sent,
                    gets=int(method == "GET"),
                    range_gets=int(method == "GET" and bool(ranged)),
                )
                self.log.append([method, path, ranged, status[0], sent])


def _request_body(environ: dict) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    return environ["wsgi.input"].read(length) if length else b""


def _check_credentials(check: bool) -> None:
    """moto's switch: after INITIAL_NO_AUTH_ACTION_COUNT requests, each is
    authenticated against moto's IAM (which knows no key until one is made)."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0 if check else float("inf")
    ActionAuthenticatorMixin.request_count = 0


def serve(host: str, port: int) -> None:
    """Serve moto's S3 on ``host``:``port`` until SIGTERM or SIGINT."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class QuietHandler(MotoRequestHandler):
        def log_request(self, code: Any = "-", size: Any = "-") -> None:
            pass  # no line per request

    app = _Counting(DomainDispatcherApplication(create_backend_app))
    server = make_server(host, port, app, threaded=True, request_handler=QuietHandler)

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"moto S3 serving http://{host}:{port}", flush=True)
    server.serve_forever()
    server.server_close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    args = parser.parse_args(argv)
    serve(args.host, args.port or free_port(args.host))


if __name__ == "__main__":
    main()
