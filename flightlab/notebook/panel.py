"""Jupyter helpers for the flightlab notebooks: panels, progress bars, plots.

Nothing here speaks the wire protocol: the panel reads a running
:class:`~flightlab.server.OfflineServer` (or asks a remote one for its stats
through :class:`~flightlab.transport.OfflineFlightClient`), progress bars are
callbacks for :meth:`~flightlab.client.RemoteRetrievalJob.to_arrow_with_progress`,
and the plots are matplotlib figures.
"""

from __future__ import annotations

import html
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flightlab.transport import Progress

# --- notebook set-up -----------------------------------------------------------------


def setup(log_level: str | None = None) -> None:
    """Quiet, readable notebook output: wide pandas columns, no deprecation
    noise from the libraries under Feast, and (with ``log_level``) flightlab's
    own log lines (one per request on a server) without Feast's chatter."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    pd.set_option("display.max_colwidth", 120)
    if log_level is not None:
        logging.basicConfig(
            level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        logging.getLogger("flightlab").setLevel(log_level.upper())


# --- is a server there? ------------------------------------------------------------


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
        from flightlab.transport import OfflineFlightClient

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


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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
    """Start an :class:`~flightlab.server.OfflineServer` in this process.

    Small batches (4,096 rows, ~13 MB of MNIST features) make progress bars move.
    """
    from flightlab.limits import ServerLimits
    from flightlab.server import OfflineServer

    repo = require_applied_repo(repo)
    limits = ServerLimits(batch_rows=batch_rows)
    return OfflineServer(repo, host=host, port=port, limits=limits).start()


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
        from flightlab.transport import OfflineFlightClient

        with OfflineFlightClient(self.location) as client:
            return client.stats()

    def panel_state(self) -> PanelState:
        """The server's figures, as the server panel shows them."""
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
    free port) when ``start`` is True or nothing answers there."""
    if not start and server_answers(host, port):
        return Connection(host, port)
    server = start_server(repo, host="127.0.0.1", port=0)
    return Connection("127.0.0.1", server.port, server)


# --- serving with a live panel ------------------------------------------------------


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class PanelState:
    """What the server panel shows, read from a running server."""

    location: str
    running: bool
    stats: dict[str, Any]
    staged: tuple[Any, ...] = ()  # flightlab.staging.StagedSummary
    updated: float = field(default_factory=time.time)

    @classmethod
    def of(cls, server: Any, location: str | None = None) -> PanelState:
        """Read ``server``; ``location`` names it once it has stopped."""
        running = bool(server.running)
        return cls(
            location=server.location if running else (location or "(not serving)"),
            running=running,
            stats=server.stats_json(),
            staged=tuple(_staged_commands(server)),
        )

    def requests_frame(self) -> pd.DataFrame:
        """Requests served per API, with how many failed."""
        requests = self.stats.get("requests_by_api", {})
        errors = self.stats.get("errors_by_api", {})
        frame = pd.DataFrame(
            {
                "api": list(requests),
                "requests": [requests[a] for a in requests],
                "errors": [errors.get(a, 0) for a in requests],
            }
        )
        return frame.sort_values("api").reset_index(drop=True)

    def to_html(self) -> str:
        s = self.stats
        status = "serving" if self.running else "stopped"
        color = "#2e7d32" if self.running else "#9e9e9e"
        rows = [
            ("address", f"<code>{html.escape(self.location)}</code>"),
            ("status", f"<b style='color:{color}'>{status}</b>"),
            (
                "staged commands",
                f"{s.get('staged_commands', 0)} ({human_bytes(s.get('staged_bytes', 0))})",
            ),
            ("rows received", f"{s.get('rows_in', 0):,}"),
            ("rows sent", f"{s.get('rows_out', 0):,}"),
            ("bytes sent", human_bytes(s.get("bytes_out", 0))),
            ("last error", _last_error_html(s.get("last_error"))),
            ("updated", time.strftime("%H:%M:%S", time.localtime(self.updated))),
        ]
        summary = "".join(
            f"<tr><th style='text-align:left;padding-right:1em'>{k}</th><td>{v}</td></tr>"
            for k, v in rows
        )
        requests = self.requests_frame()
        if len(requests):
            per_api = "".join(
                f"<tr><td><code>{html.escape(str(r.api))}</code></td>"
                f"<td style='text-align:right'>{r.requests}</td>"
                f"<td style='text-align:right'>{r.errors}</td></tr>"
                for r in requests.itertuples()
            )
        else:
            per_api = "<tr><td colspan=3><i>no requests yet</i></td></tr>"
        staged = "".join(
            f"<tr><td><code>{html.escape(c.command_id[:8])}</code></td>"
            f"<td><code>{html.escape(c.api)}</code></td>"
            f"<td>{html.escape(', '.join(c.params))}</td>"
            f"<td style='text-align:right'>{human_bytes(c.nbytes)}</td>"
            f"<td style='text-align:right'>{c.age_seconds:.1f} s</td></tr>"
            for c in self.staged
        )
        staged_table = (
            "<table><tr><th>command</th><th>api</th><th>params</th><th>size</th><th>age</th></tr>"
            f"{staged}</table>"
            if staged
            else "<i>none staged</i>"
        )
        return (
            "<div style='font-family:sans-serif'>"
            "<h4 style='margin:0.2em 0'>flightlab offline server</h4>"
            f"<table>{summary}</table>"
            "<h5 style='margin:0.5em 0 0.2em 0'>requests served per API</h5>"
            f"<table><tr><th>api</th><th>requests</th><th>errors</th></tr>{per_api}</table>"
            "<h5 style='margin:0.5em 0 0.2em 0'>staged commands</h5>"
            f"{staged_table}</div>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_text(self) -> str:
        s = self.stats
        lines = [
            f"flightlab offline server at {self.location} "
            f"({'serving' if self.running else 'stopped'})",
            f"  staged commands: {s.get('staged_commands', 0)}",
            f"  rows sent: {s.get('rows_out', 0):,}",
            f"  bytes sent: {human_bytes(s.get('bytes_out', 0))}",
        ]
        for r in self.requests_frame().itertuples():
            lines.append(f"  {r.api}: {r.requests} requests, {r.errors} errors")
        last = s.get("last_error")
        lines.append(f"  last error: {_last_error_text(last)}")
        return "\n".join(lines)


def _staged_commands(server: Any) -> list[Any]:
    """Every caller's staged commands (the panel is the operator's view)."""
    try:
        return server.staging.summaries(everyone=True)
    except TypeError:  # a staging without per-caller ownership
        return server.staging.summaries()


def _last_error_text(last: Mapping[str, Any] | None) -> str:
    if not last:
        return "none"
    return f"{last.get('api')}: {last.get('class')}: {last.get('message')}"


def _last_error_html(last: Mapping[str, Any] | None) -> str:
    if not last:
        return "none"
    message = str(last.get("message", ""))
    if len(message) > 300:
        message = message[:300] + "..."
    return (
        f"<span style='color:#c62828'><code>{html.escape(str(last.get('api')))}</code>: "
        f"{html.escape(str(last.get('class')))}: {html.escape(message)}</span>"
    )


class ServerPanel:
    """A live ipywidgets panel of a running server: address, staged commands,
    requests per API, rows and bytes sent, last error.

    Display it (it is the last expression of a cell, or ``display(panel)``),
    then call :meth:`refresh` (``serve_for`` does, every second).
    """

    def __init__(self, server: Any):
        import ipywidgets as widgets

        self.server = server
        self.html = widgets.HTML()
        self.widget = widgets.VBox([self.html])
        self.state: PanelState | None = None
        self.refresh()

    def refresh(self) -> PanelState:
        self.state = PanelState.of(self.server, self.state.location if self.state else None)
        self.html.value = self.state.to_html()
        return self.state

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def snapshot(self) -> Any:
        """A static copy of the panel (stays visible in a saved notebook)."""
        from IPython.display import HTML

        return HTML(self.refresh().to_html())


def serve_for(
    seconds: float = 0,
    *,
    stop_file: str | Path | None = None,
    interval: float = 1.0,
    on_tick: Callable[[], Any] | None = None,
) -> str:
    """Block while a server serves (from its own thread), calling ``on_tick``
    every ``interval`` seconds. Returns why it stopped:

    - ``seconds`` > 0 elapsed ("time is up"),
    - ``stop_file`` appeared ("stop file"),
    - the kernel was interrupted ("interrupted"; ``seconds=0`` waits for that).
    """
    deadline = time.monotonic() + seconds if seconds and seconds > 0 else None
    stop = Path(stop_file) if stop_file else None
    try:
        while True:
            if on_tick is not None:
                on_tick()
            if stop is not None and stop.exists():
                return "stop file"
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "time is up"
                time.sleep(min(interval, remaining))
            else:
                time.sleep(interval)
    except KeyboardInterrupt:
        return "interrupted"
    finally:
        if on_tick is not None:
            on_tick()


# --- progress bars ---------------------------------------------------------------


class ProgressBar:
    """A tqdm bar fed by flightlab :class:`~flightlab.transport.Progress` callbacks.

    ``job.to_arrow_with_progress(bar)``: rows as the bar's unit, megabytes
    and batches as its postfix. A widget in Jupyter, text elsewhere.
    """

    def __init__(self, total: int | None, desc: str = "rows", **tqdm_kwargs: Any):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="rows", unit_scale=True, **tqdm_kwargs)
        self.last: Progress | None = None

    def __call__(self, progress: Progress) -> None:
        self.last = progress
        total = getattr(progress, "total_rows", None)
        if total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar.update(progress.rows - self.bar.n)
        self.bar.set_postfix(MB=f"{progress.bytes / 1e6:.0f}", batches=progress.batches)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def fetch_with_progress(job: Any, total: int | None = None, desc: str = "retrieving") -> Any:
    """Run a remote retrieval job with a progress bar; return its Arrow table."""
    with ProgressBar(total, desc=desc) as bar:
        table = job.to_arrow_with_progress(bar)
    return table


# --- timing ---------------------------------------------------------------------------


def time_calls(calls: Mapping[str, Callable[[], Any]], repeat: int = 3) -> dict[str, list[float]]:
    """Seconds each call took, ``repeat`` times, interleaved so that a busy
    moment of the machine does not fall on one call only."""
    timings: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            timings[name].append(time.perf_counter() - started)
    return timings


def timing_frame(timings: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "retrieval": list(timings),
            "best (s)": [min(v) for v in timings.values()],
            "median (s)": [float(np.median(v)) for v in timings.values()],
            "runs": [len(v) for v in timings.values()],
        }
    )


# --- plots ----------------------------------------------------------------------------


def digit_grid(
    images: np.ndarray,
    labels: Sequence[Any] | None = None,
    ncols: int = 10,
    title: str | None = None,
    cell_inches: float = 0.9,
) -> Any:
    """A matplotlib figure of digits (``images``: (n, 28, 28), 0..1 or 0..255)."""
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    n = len(images)
    if n == 0:
        raise ValueError("no images to show")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    vmax = 255 if images.max() > 1 else 1
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(ncols * cell_inches, nrows * (cell_inches + (0.25 if labels is not None else 0))),
        squeeze=False,
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=vmax, interpolation="nearest")
            if labels is not None:
                ax.set_title(str(labels[i]), fontsize=9, pad=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def timing_chart(
    timings: Mapping[str, Sequence[float] | float], title: str = "Historical retrieval time"
) -> Any:
    """A bar chart of the best time of each retrieval (error bar to the worst)."""
    import matplotlib.pyplot as plt

    names = list(timings)
    runs = [np.atleast_1d(np.asarray(timings[n], dtype=float)) for n in names]
    best = np.array([r.min() for r in runs])
    worst = np.array([r.max() for r in runs])
    fig, ax = plt.subplots(figsize=(6, 3.2))
    colors = ["#607d8b", "#1e88e5", "#43a047", "#fb8c00"][: len(names)]
    bars = ax.bar(names, best, color=colors, yerr=[np.zeros_like(best), worst - best], capsize=6)
    for bar, value in zip(bars, best, strict=True):
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            value / 2,
            f"{value:.2f} s",
            ha="center",
            va="center",
            color="white",
            fontweight="bold",
        )
    ax.set_ylabel("seconds (best run; whisker: slowest)")
    ax.set_title(title)
    ax.set_ylim(0, max(worst.max(), best.max()) * 1.25)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig
