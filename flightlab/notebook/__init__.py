"""Jupyter helpers for the flightlab notebooks: servers, panels, progress bars, plots.

Nothing here speaks the wire protocol: the panel reads a running
:class:`~flightlab.server.OfflineServer` (or asks a remote one for its stats
through :class:`~flightlab.client.transport.OfflineFlightClient`), progress bars are
callbacks for :meth:`~flightlab.client.RemoteRetrievalJob.to_arrow_with_progress`,
and the plots are matplotlib figures.

By concern: :mod:`~flightlab.notebook.servers` (find, start or connect to a
server), :mod:`~flightlab.notebook.panel` (the live server panel),
:mod:`~flightlab.notebook.progress` (progress bars) and
:mod:`~flightlab.notebook.plots` (timings and figures). Everything public is
exported here, so notebooks write ``nb.serve_for(...)``.
"""

from __future__ import annotations

from flightlab.notebook.panel import (
    PanelState,
    ServerPanel,
    human_bytes,
    serve_for,
)
from flightlab.notebook.plots import (
    digit_grid,
    time_calls,
    timing_chart,
    timing_frame,
)
from flightlab.notebook.progress import (
    ProgressBar,
    fetch_with_progress,
    headless,
)
from flightlab.notebook.servers import (
    Connection,
    announce,
    announced,
    answered_by,
    connect_or_start,
    location_of,
    require_applied_repo,
    server_answers,
    server_file,
    setup,
    start_server,
    wait_for_server,
)

__all__ = [
    "Connection",
    "announce",
    "answered_by",
    "announced",
    "PanelState",
    "ProgressBar",
    "ServerPanel",
    "connect_or_start",
    "digit_grid",
    "fetch_with_progress",
    "headless",
    "human_bytes",
    "location_of",
    "require_applied_repo",
    "serve_for",
    "server_answers",
    "server_file",
    "setup",
    "start_server",
    "time_calls",
    "timing_chart",
    "timing_frame",
    "wait_for_server",
]
