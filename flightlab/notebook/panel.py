"""The ArrowServer notebook's live panel: a running server's staged commands,
requests, rows, bytes and errors, refreshed while it serves."""

from __future__ import annotations

import html
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from flightlab.notebook.progress import headless as headless_run


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
    staged: tuple[Any, ...] = ()  # flightlab.server.staging.StagedSummary
    log: tuple[str, ...] = ()  # the server's latest log lines, oldest first
    updated: float = field(default_factory=time.time)

    @classmethod
    def of(cls, server: Any, location: str | None = None, log: tuple[str, ...] = ()) -> PanelState:
        """Read ``server``; ``location`` names it once it has stopped."""
        running = bool(server.running)
        return cls(
            location=server.location if running else (location or "(not serving)"),
            running=running,
            stats=server.stats_json(),
            staged=tuple(_staged_commands(server)),
            log=log,
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
            ("kept results", html.escape(kept_results_text(s))),
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
            f"{staged_table}{self._log_html()}</div>"
        )

    def _log_html(self) -> str:
        if not self.log:
            return ""
        lines = html.escape("\n".join(self.log))
        return (
            "<h5 style='margin:0.5em 0 0.2em 0'>latest requests (server log)</h5>"
            f"<pre style='font-size:85%;margin:0;white-space:pre-wrap'>{lines}</pre>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        # Both: a saved notebook's text/plain is what text-only viewers show.
        return {"text/plain": self.to_text(), "text/html": self.to_html()}

    def status_line(self) -> str:
        """One line: where, serving or stopped, and what it served."""
        s = self.stats
        requests = sum(s.get("requests_by_api", {}).values())
        errors = sum(s.get("errors_by_api", {}).values())
        return (
            f"flightlab offline server at {self.location}: "
            f"{'serving' if self.running else 'stopped'}; {requests} requests "
            f"({errors} failed), {s.get('rows_out', 0):,} rows sent "
            f"({human_bytes(s.get('bytes_out', 0))})"
        )

    def to_text(self) -> str:
        s = self.stats
        lines = [
            self.status_line(),
            f"  staged commands: {s.get('staged_commands', 0)}",
            f"  rows sent: {s.get('rows_out', 0):,}",
            f"  bytes sent: {human_bytes(s.get('bytes_out', 0))}",
            f"  kept results: {kept_results_text(s)}",
        ]
        for r in self.requests_frame().itertuples():
            lines.append(f"  {r.api}: {r.requests} requests, {r.errors} errors")
        last = s.get("last_error")
        lines.append(f"  last error: {_last_error_text(last)}")
        if self.log:
            lines.append("  latest requests (server log):")
            lines.extend(f"    {line}" for line in self.log)
        return "\n".join(lines)


def kept_results_text(stats: Mapping[str, Any]) -> str:
    """The server's kept results in a line: entries, bytes, hits and misses."""
    reuse = stats.get("result_reuse") or {}
    if not reuse.get("max_bytes"):
        return "off"
    return (
        f"{reuse.get('entries', 0)} ({human_bytes(reuse.get('bytes', 0))} of "
        f"{human_bytes(reuse['max_bytes'])}); {reuse.get('hits', 0)} hits, "
        f"{reuse.get('misses', 0)} misses"
    )


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


SERVER_LOGGER = "flightlab.server"  # one INFO line per request (server.lifecycle)


class RecentLog(logging.Handler):
    """The last ``size`` lines of the server's log, for the panel: a server
    thread's log lines would otherwise land under whichever cell ran last."""

    def __init__(self, size: int = 8):
        super().__init__(level=logging.INFO)
        self.lines: deque[str] = deque(maxlen=size)
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a logging handler must not raise into the server
            self.handleError(record)

    def attach(self) -> None:
        logger = logging.getLogger(SERVER_LOGGER)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.addHandler(self)

    def detach(self) -> None:
        logging.getLogger(SERVER_LOGGER).removeHandler(self)


class ServerPanel:
    """A live ipywidgets panel of a running server: address, staged commands,
    requests per API, rows and bytes sent, last error, and a **Stop** button.

    Display it (the last expression of a cell, or ``display(panel)``). With
    ``live`` (the default) a background thread refreshes it every ``interval``
    seconds, so the kernel stays free for other cells; the thread ends, after
    one last refresh, once the server stops (the button, ``server.stop()`` or
    :func:`serve_for`). It also shows the server's latest log lines (every
    in-process server's: they share the ``flightlab.server`` logger).
    """

    def __init__(
        self,
        server: Any,
        interval: float = 1.0,
        live: bool = True,
        headless: bool | None = None,
    ):
        import ipywidgets as widgets

        self.server = server
        self.interval = interval
        self.headless = headless_run() if headless is None else headless
        self._shown: Any = None  # headless: the DisplayHandle of the snapshot shown
        self.html = widgets.HTML()
        self.stop_button = widgets.Button(
            description="Stop server", button_style="danger", icon="stop"
        )
        self.stop_button.on_click(self.stop_server)
        self.widget = widgets.VBox([self.html, self.stop_button])
        self.state: PanelState | None = None
        self.recent = RecentLog()
        self.recent.attach()
        # refresh() runs in the kernel's thread and the refresher's: one at a time.
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()
        if live:
            self.start()

    @property
    def live(self) -> bool:
        """True while the background refresher runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Refresh from a background thread until the server stops."""
        if self.live:
            return
        self._halt.clear()
        self._thread = threading.Thread(
            target=self._refresh_while_serving, name="flightlab-panel", daemon=True
        )
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop refreshing (the server keeps serving)."""
        self._halt.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _refresh_while_serving(self) -> None:
        while not self._halt.wait(self.interval):
            if not self.refresh().running:
                return

    def refresh(self) -> PanelState:
        with self._lock:
            previous = self.state.location if self.state else None
            self.state = PanelState.of(self.server, previous, tuple(self.recent.lines))
            if not self.state.running:
                # The button first: each trait reaches the browser as its own
                # message, so a page that shows "stopped" shows the button done too.
                self.recent.detach()
                self.stop_button.disabled = True
                self.stop_button.description = "Server stopped"
            self.html.value = self.state.to_html()
            if self._shown is not None:
                # A saved notebook keeps the updates that arrive while some
                # cell runs: the refresher's may come between cells, a
                # refresh() from a cell always lands.
                self._shown.update(self.state)
            return self.state

    def stop_server(self, _button: Any = None) -> PanelState:
        """Stop the server (the button calls this), then show it stopped."""
        self.stop_button.disabled = True
        self.server.stop()
        self.close()
        return self.refresh()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        if self.headless:
            self._shown = display(self.snapshot(), display_id=True)
        else:
            display(self.widget)

    def snapshot(self) -> PanelState:
        """The panel now, as static text and HTML (stays readable in a saved notebook)."""
        return self.refresh()


def serve_for(
    server: Any,
    seconds: float = 0,
    *,
    stop_file: str | Path | None = None,
    interval: float = 0.5,
) -> str:
    """Serve for a while, then stop ``server``; returns why serving ended.

    With neither ``seconds`` nor ``stop_file`` it returns at once ("serving in
    the background"): the server runs on in its own thread until it is stopped
    (the panel's button, ``server.stop()``). Otherwise it blocks, as headless
    runs need, until ``seconds`` elapsed ("time is up"), ``stop_file`` appeared
    ("stop file"), the kernel was interrupted ("interrupted") or someone else
    stopped the server ("stopped"), and then stops the server.
    """
    if not (seconds and seconds > 0) and stop_file is None:
        return "serving in the background"
    deadline = time.monotonic() + seconds if seconds and seconds > 0 else None
    stop = Path(stop_file) if stop_file else None
    try:
        while True:
            if not server.running:
                return "stopped"
            if stop is not None and stop.exists():
                return "stop file"
            if deadline is not None and deadline - time.monotonic() <= 0:
                return "time is up"
            wait = interval if deadline is None else min(interval, deadline - time.monotonic())
            time.sleep(max(wait, 0))
    except KeyboardInterrupt:
        return "interrupted"
    finally:
        server.stop()
