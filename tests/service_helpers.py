"""What the service tests share: server processes, a load balancer, probes.

- :func:`server_process` starts ``flightlab serve_offline`` (or any command
  that ends in it) as a subprocess, its log in the test's folder
  (:func:`flightlab.testing.processes.running_server`);
- :class:`RoundRobinProxy` is a small TCP load balancer on loopback: each new
  connection goes to the next backend, as a Kubernetes Service (kube-proxy)
  spreads connections over replicas;
- :func:`health_status` asks a gRPC health port what a Kubernetes probe asks;
- :func:`base64_feature_store_yaml` encodes a repo's config as Feast's chart
  passes it.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pyarrow.flight as flight

from flightlab.testing.processes import ServerProcess, running_server
from flightlab.wire.actions import ACTION_HEALTHCHECK

_PUMP_BYTES = 1 << 16


@contextmanager
def server_process(
    command: Sequence[str],
    tmp_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    side_ports: Sequence[str] = (),
) -> Iterator[ServerProcess]:
    """Start ``command``; yield once it printed its 'serving' line and a line
    for each of ``side_ports`` ("health", "metrics"); never leave it running."""
    log = tmp_path / f"server-{os.urandom(3).hex()}.stderr"
    options = {"env": env, "cwd": cwd, "side_ports": side_ports}
    with running_server(command, log=log, stop_signal=signal.SIGKILL, **options) as server:
        yield server


class RoundRobinProxy:
    """A TCP proxy on 127.0.0.1 that sends each new connection to the next backend."""

    def __init__(self, backends: Sequence[int], max_connections: int = 64):
        self.backends = list(backends)
        self.connections_to: dict[int, int] = dict.fromkeys(self.backends, 0)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._next = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> RoundRobinProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            backend = self.backends[self._next % len(self.backends)]
            self._next += 1
            self.connections_to[backend] += 1
            if not self._slots.acquire(timeout=5):
                client.close()
                continue
            threading.Thread(target=self._relay, args=(client, backend), daemon=True).start()

    def _relay(self, client: socket.socket, backend: int) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", backend), timeout=10)
        except OSError:
            client.close()
            self._slots.release()
            return
        upstream.settimeout(None)
        done = threading.Event()
        for source, target in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(source, target, done), daemon=True).start()
        while not done.wait(0.2) and not self._stop.is_set():
            pass
        for sock in (client, upstream):
            sock.close()
        self._slots.release()


def _pump(source: socket.socket, target: socket.socket, done: threading.Event) -> None:
    try:
        while chunk := source.recv(_PUMP_BYTES):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        done.set()


def health_status(port: int, service: str = "") -> str:
    """What ``grpc.health.v1.Health/Check`` answers on ``port`` (as a kubelet probe)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def healthcheck_action(location: str) -> dict:
    client = flight.FlightClient(location)
    try:
        [result] = list(client.do_action(flight.Action(ACTION_HEALTHCHECK, b"")))
    finally:
        client.close()
    return json.loads(result.body.to_pybytes())


def base64_feature_store_yaml(repo: Path) -> str:
    """The repo's feature_store.yaml with its relative paths made absolute, base64-encoded."""
    text = (repo / "feature_store.yaml").read_text()
    text = text.replace("path: data/", f"path: {repo / 'data'}/")
    return base64.b64encode(text.encode()).decode()
