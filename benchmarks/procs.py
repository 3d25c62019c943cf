"""The benchmark's servers: each in a child process, started, measured and stopped.

Starting a server and reading its port, free ports, and peak RSS from
``/proc`` (Linux's ``VmHWM``, reset through ``/proc/PID/clear_refs``) are
:mod:`flightlab.testing.processes`'; this module picks the command for each
kind of server and records what the benchmark reports of it.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from flightlab.testing.processes import (
    SERVING_LINE,
    ServerProcess,
    ServerStartError,
    cpu_seconds,
    current_rss,
    feast_command,
    free_port,
    peak_rss,
    serve_offline_command,
    start_servers,
)

# What the loopback server (worker.py loopback-server) prints once it listens.
LOOPBACK_LINE = re.compile(r"LISTENING (?P<port>\d+)")


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:.0f}s")


class Server:
    """A server in a child process: ``kind`` is ``flightlab``, ``feast`` or
    ``loopback`` (``extra_args`` go to the flightlab or loopback command line);
    use as a context manager."""

    def __init__(self, kind: str, repo: Path | None, log: Path, extra_args: list[str] = ()):
        self.kind = kind
        self.repo = repo
        self.log_path = log
        self.extra_args = list(extra_args)
        self.port = 0
        self.server: ServerProcess | None = None
        self.idle_rss: int | None = None
        self.started_in = 0.0

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def start(self, timeout: float = 120) -> Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        begun = time.perf_counter()
        if self.kind == "feast":
            self.server = self._start_feast(timeout)
        else:
            if self.kind == "flightlab":
                # Timed calls repeat one request: kept results would answer them at once.
                command = serve_offline_command(
                    self.repo, "--log-level", "warning", "--reuse-bytes", "0"
                )
                ready = SERVING_LINE
            else:
                worker = Path(__file__).with_name("worker.py")
                command, ready = [sys.executable, str(worker), "loopback-server"], LOOPBACK_LINE
            command += self.extra_args
            try:
                [self.server] = start_servers(
                    [command], log=self.log_path, timeout=timeout, ready=ready
                )
            except ServerStartError as exc:
                raise RuntimeError(
                    f"the {self.kind} server did not start; see {self.log_path}"
                ) from exc
        self.port = self.server.port
        self.started_in = time.perf_counter() - begun
        self.idle_rss = current_rss(self.pid)
        return self

    def _start_feast(self, timeout: float) -> ServerProcess:
        """``feast serve_offline`` prints no port: it gets a free one, and is
        ready once something listens there."""
        port = free_port()
        command = feast_command(self.repo, "serve_offline", "-h", "127.0.0.1", "-p", str(port))
        with open(self.log_path, "a") as log:
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        server = ServerProcess(proc, port, f"grpc+tcp://127.0.0.1:{port}", self.log_path)
        try:
            _wait_for_port(port, proc, timeout)
        except BaseException:
            server.stop(signal.SIGKILL)
            raise
        return server

    def peak_rss(self) -> int | None:
        return peak_rss(self.pid)

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            # Feast's server stops on KeyboardInterrupt, flightlab's on either.
            server.stop(signal.SIGINT, timeout=15)
