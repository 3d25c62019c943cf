"""Finding or starting the server a notebook talks to: is one answering on a
port, start one in this kernel, connect to one or the other."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd


def setup(log_level: str | None = None) -> None:
    """Quiet, readable notebook output: wide pandas columns, no deprecation
    noise from the libraries under Feast, no DuckDB progress widgets, and
    (with ``log_level``) flightlab's own log lines (one per request on a
    server) without Feast's chatter."""
    import logging
    import warnings

    import feast  # noqa: F401  (importing Feast turns DeprecationWarnings back on: filter after)

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    pd.set_option("display.max_colwidth", 120)
    _no_duckdb_progress_bars()
    if log_level is not None:
        logging.basicConfig(
            level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        logging.getLogger("flightlab").setLevel(log_level.upper())


def _no_duckdb_progress_bars() -> None:
    """DuckDB draws an ipywidgets bar for its slow queries under whichever cell
    ran last, even from a server thread (a black bar below an unrelated cell);
    the notebooks show their own progress. Feast's duckdb store queries through
    ibis's default backend, whose connection (and its cursors) this turns off."""
    try:
        import ibis

        ibis.get_backend().con.execute("SET enable_progress_bar = false")
    except (ImportError, AttributeError):  # no ibis, or not a duckdb backend
        pass


def location_of(host: str, port: int) -> str:
    return f"grpc+tcp://{host}:{port}"


def server_answers(host: str, port: int, timeout: float = 3.0) -> bool:
    """True if a flightlab server at ``host:port`` answers a stats request
    within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError:
        return False
    result: dict[str, Any] = {}

    def ask() -> None:
        from flightlab.client.transport import OfflineFlightClient

        try:
            with OfflineFlightClient(location_of(host, port)) as client:
                result["stats"] = client.stats()
        except Exception as exc:  # anything but an answer means "no"
            result["error"] = exc

    worker = threading.Thread(target=ask, name="flightlab-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    return "stats" in result


def wait_for_server(
    host: str,
    port: int,
    timeout: float = 120.0,
    interval: float = 0.5,
    alive: Callable[[], bool] | None = None,
) -> bool:
    """Wait until a server answers at ``host:port``; False after ``timeout``
    seconds or as soon as ``alive()`` says whatever should start it has died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server_answers(host, port, timeout=min(3.0, interval * 4)):
            return True
        if alive is not None and not alive():
            return False
        time.sleep(interval)
    return False


def require_applied_repo(repo: str | Path) -> Path:
    """The repo, if it has been ``feast apply``'d; else a FileNotFoundError
    that says which notebooks make it."""
    repo = Path(repo)
    if not (repo / "feature_store.yaml").is_file() or not (repo / "data/registry.db").is_file():
        raise FileNotFoundError(
            f"{repo} is not an applied feature repo: run mnist_demo/01_prepare_mnist.ipynb "
            "and mnist_demo/02_setup_feast.ipynb first"
        )
    return repo


def start_server(
    repo: str | Path, host: str = "127.0.0.1", port: int = 0, batch_rows: int = 4096
) -> Any:
    """Start an :class:`~flightlab.server.OfflineServer` in this process, its
    exports written to the repo's ``data/exports``.

    Small batches (4,096 rows, ~13 MB of MNIST features) make progress bars move.
    """
    from flightlab.operations.options import ServiceOptions
    from flightlab.server import OfflineServer
    from flightlab.server.limits import ServerLimits

    repo = require_applied_repo(repo)
    limits = ServerLimits(batch_rows=batch_rows)
    service = ServiceOptions(export_location=str((repo / "data" / "exports").resolve()))
    return OfflineServer(repo, host=host, port=port, limits=limits, service=service).start()


def answered_by(engines: dict[str, int]) -> str:
    """Who answered the retrievals :meth:`Connection.engines_since` counted, in words."""
    words = {"feast": "Feast's store"}
    return ", ".join(words.get(name, f"{name} engine") for name in engines) or "nobody"


SERVER_FILE = "flightlab_server.json"  # in the repo's data folder


def server_file(repo: str | Path) -> Path:
    """Where a notebook's server says where it listens: ``data/flightlab_server.json``."""
    return Path(repo) / "data" / SERVER_FILE


def announce(server: Any, repo: str | Path) -> Path:
    """Write where ``server`` listens to :func:`server_file` so that a client
    notebook started with ``port = 0`` finds it; the file is removed once the
    server stops (a watcher thread; a stale file is ignored anyway, see
    :func:`announced`)."""
    path = server_file(repo)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"host": server.host, "port": server.port, "location": server.location}
    path.write_text(json.dumps(body) + "\n")

    def withdraw_when_stopped() -> None:
        while server.running:
            time.sleep(0.5)
        try:
            if json.loads(path.read_text()).get("port") == body["port"]:
                path.unlink()
        except (OSError, ValueError):  # gone, or rewritten by another server
            pass

    threading.Thread(target=withdraw_when_stopped, name="flightlab-announce", daemon=True).start()
    return path


def announced(repo: str | Path, timeout: float = 3.0) -> tuple[str, int] | None:
    """``(host, port)`` of the server :func:`announce` named for ``repo``, if
    it answers; None when there is no file or nothing answers there."""
    try:
        body = json.loads(server_file(repo).read_text())
        host, port = str(body["host"]), int(body["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return (host, port) if server_answers(host, port, timeout=timeout) else None


@dataclass
class Connection:
    """Where a client notebook's server is, and whether the notebook started it."""

    host: str
    port: int
    server: Any = None  # the in-process OfflineServer, if this notebook started one

    @property
    def location(self) -> str:
        return location_of(self.host, self.port)

    @property
    def started_here(self) -> bool:
        return self.server is not None

    def describe(self) -> str:
        how = "started in this kernel" if self.started_here else "already running"
        return f"flightlab server at {self.location} ({how})"

    def stats(self) -> dict[str, Any]:
        """The server's stats (in-process or remote)."""
        if self.server is not None:
            return self.server.stats_json()
        from flightlab.client.transport import OfflineFlightClient

        with OfflineFlightClient(self.location) as client:
            return client.stats()

    def engines_since(self, before: dict[str, Any]) -> dict[str, int]:
        """Retrievals answered since ``before`` (an earlier :meth:`stats`), by
        who answered them: ``flightlab`` (its DuckDB engine) or ``feast``."""
        then = before.get("requests_by_engine", {})
        now = self.stats().get("requests_by_engine", {})
        return {
            name: count - then.get(name, 0)
            for name, count in now.items()
            if count > then.get(name, 0)
        }

    def kept_hits_since(self, before: dict[str, Any]) -> int:
        """Retrievals answered from the server's kept results since ``before``."""
        hits = lambda stats: (stats.get("result_reuse") or {}).get("hits", 0)  # noqa: E731
        return hits(self.stats()) - hits(before)

    def panel_state(self) -> Any:
        """The server's figures, as the server panel shows them (a PanelState)."""
        from flightlab.notebook.panel import PanelState  # the panel builds on this module

        if self.server is not None:
            return PanelState.of(self.server)
        return PanelState(self.location, True, self.stats())

    def close(self) -> None:
        """Stop the server if this notebook started it."""
        if self.server is not None:
            self.server.stop()
            self.server = None


def connect_or_start(
    repo: str | Path, host: str = "127.0.0.1", port: int = 8815, start: bool = False
) -> Connection:
    """Use the server at ``host:port``, or start one in this process (on a
    free port) when ``start`` is True or nothing answers there.

    ``port=0``: the server a notebook announced for ``repo`` (:func:`announce`).
    """
    if not start and port == 0:
        found = announced(repo)
        if found is not None:
            return Connection(*found)
    elif not start and server_answers(host, port):
        return Connection(host, port)
    server = start_server(repo, host="127.0.0.1", port=0)
    return Connection("127.0.0.1", server.port, server)
