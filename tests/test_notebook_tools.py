"""The notebook helpers (flightlab.notebook) against a real server: no mocks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from paths import _run_notebooks_script  # noqa: E402

from flightlab import notebook as nb  # noqa: E402
from flightlab.testing.processes import free_port  # noqa: E402
from flightlab.testing.sample_repo import client_repo_yaml, create_sample_repo, entity_frame  # noqa: E402

FEATURES = ["driver_stats:conv_rate", "driver_stats:avg_daily_trips"]


@pytest.fixture(scope="module")
def tools_repo(tmp_path_factory) -> Path:
    return create_sample_repo(tmp_path_factory.mktemp("tools") / "repo", "duckdb")


@pytest.fixture(scope="module")
def tools_server(tools_repo):
    server = nb.start_server(tools_repo, batch_rows=7)
    yield server
    server.stop()


def client_store(server, repo: Path, path: Path):
    from feast import FeatureStore

    (path / "data").mkdir(parents=True, exist_ok=True)
    (path / "feature_store.yaml").write_text(
        client_repo_yaml("127.0.0.1", server.port, registry=repo / "data" / "registry.db")
    )
    return FeatureStore(repo_path=str(path))


@pytest.fixture(scope="module")
def tools_client(tools_server, tools_repo, tmp_path_factory):
    return client_store(tools_server, tools_repo, tmp_path_factory.mktemp("client"))


# --- is a server there? -------------------------------------------------------------


def test_nothing_answers_on_a_free_port():
    port = free_port()
    assert not nb.server_answers("127.0.0.1", port, timeout=2)
    assert not nb.wait_for_server("127.0.0.1", port, timeout=0.6, interval=0.2)
    assert not nb.wait_for_server("127.0.0.1", port, timeout=30, alive=lambda: False)


def test_a_running_server_answers(tools_server):
    assert nb.server_answers("127.0.0.1", tools_server.port)
    assert nb.wait_for_server("127.0.0.1", tools_server.port, timeout=5)


def test_a_listener_that_is_not_a_flight_server_does_not_count():
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not nb.server_answers("127.0.0.1", port, timeout=1.5)


def test_connect_uses_a_running_server_or_starts_one(tools_server, tools_repo):
    existing = nb.connect_or_start(tools_repo, "127.0.0.1", tools_server.port)
    assert not existing.started_here and existing.port == tools_server.port
    assert "already running" in existing.describe()
    assert "requests_by_api" in existing.stats()
    existing.close()  # not ours: leaves it running
    assert tools_server.running

    nobody = free_port()
    started = nb.connect_or_start(tools_repo, "127.0.0.1", nobody)
    try:
        assert started.started_here and started.server.running
        assert nb.server_answers(started.host, started.port)
        assert "started in this kernel" in started.describe()
        assert started.panel_state().running
    finally:
        started.close()
    assert started.server is None
    forced = nb.connect_or_start(tools_repo, "127.0.0.1", tools_server.port, start=True)
    try:
        assert forced.started_here and forced.port != tools_server.port
    finally:
        forced.close()


def test_a_connection_tells_which_engine_answered(tools_server, tools_repo, tools_client):
    connection = nb.connect_or_start(tools_repo, "127.0.0.1", tools_server.port)
    before = connection.stats()
    tools_client.get_historical_features(entity_frame(5), FEATURES).to_arrow()
    assert connection.engines_since(before) == {"flightlab": 1}
    assert connection.engines_since(connection.stats()) == {}


def test_an_unapplied_repo_is_refused_with_a_hint(tmp_path):
    with pytest.raises(FileNotFoundError, match="02_setup_feast"):
        nb.start_server(tmp_path)


# --- the server panel ----------------------------------------------------------------------


def test_the_panel_reflects_real_server_stats(tools_repo, tmp_path):
    from feast.errors import FeatureViewNotFoundException

    from flightlab.client.transport import OfflineFlightClient
    from flightlab.server import OfflineServer

    server = OfflineServer(tools_repo, port=0).start()
    try:
        panel = nb.ServerPanel(server)
        state = panel.state
        assert state.running and state.location == server.location
        assert "no requests yet" in state.to_html()
        assert state.stats["rows_out"] == 0

        store = client_store(server, tools_repo, tmp_path)
        rows = store.get_historical_features(entity_frame(20), FEATURES).to_arrow()
        state = panel.refresh()
        assert state.stats["requests_by_api"] == {"get_historical_features": 1}
        assert state.stats["rows_out"] == rows.num_rows == 20
        assert state.stats["bytes_out"] > 0
        frame = state.requests_frame()
        assert frame.to_dict("records") == [
            {"api": "get_historical_features", "requests": 1, "errors": 0}
        ]
        html = panel.html.value
        assert server.location in html and "get_historical_features" in html
        assert "rows sent" in html and "<td>20</td>" in html
        assert "kept results" in html and "0 hits, 1 misses" in html

        # The same retrieval again: answered from the kept result.
        store.get_historical_features(entity_frame(20), FEATURES).to_arrow()
        state = panel.refresh()
        assert state.stats["result_reuse"]["hits"] == 1
        assert state.stats["requests_by_engine"] == {"flightlab": 2}  # it computed the kept one
        assert "1 hits, 1 misses" in state.to_text()

        # A request the server refuses (a client that skips Feast's own checks).
        from flightlab.wire import protocol

        bad = protocol.GetHistoricalFeatures(
            features=("no_such_view:x",), entity_df=_arrow(entity_frame(5))
        )
        with OfflineFlightClient(server.location) as client:
            with pytest.raises(FeatureViewNotFoundException):
                client.fetch(bad)
        state = panel.refresh()
        assert state.stats["errors_by_api"] == {"get_historical_features": 1}
        assert "no_such_view" in panel.html.value
        assert "no_such_view" in state.to_text()

        # A command staged but never run shows as staged.
        with OfflineFlightClient(server.location) as client:
            client.stage(
                protocol.GetHistoricalFeatures(
                    features=tuple(FEATURES), entity_df=_arrow(entity_frame(3))
                )
            )
        state = panel.refresh()
        assert state.stats["staged_commands"] == 1
        assert len(state.staged) == 1 and state.staged[0].api == "get_historical_features"
        assert "entity_df" in panel.html.value
        assert "none staged" not in panel.html.value
    finally:
        server.stop()
    state = panel.refresh()
    assert not state.running and state.location.startswith("grpc+tcp://")
    assert "stopped" in panel.html.value
    shown = panel.snapshot()._repr_mimebundle_()
    assert "<b style='color:#9e9e9e'>stopped</b>" in shown["text/html"]
    final = shown["text/plain"].splitlines()[0]
    assert final.startswith(f"flightlab offline server at {state.location}: stopped; "), final
    assert "requests (1 failed), 40 rows sent" in final, final


def _arrow(frame):
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def test_serve_for_without_a_limit_leaves_the_server_serving(tools_repo):
    server = nb.start_server(tools_repo)
    try:
        assert nb.serve_for(server) == "serving in the background"
        assert server.running and nb.server_answers("127.0.0.1", server.port)
    finally:
        server.stop()


def test_serve_for_stops_the_server_on_time_on_a_stop_file_or_when_stopped(tools_repo, tmp_path):
    server = nb.start_server(tools_repo)
    started = time.monotonic()
    assert nb.serve_for(server, 0.3, interval=0.05) == "time is up"
    assert 0.25 < time.monotonic() - started < 10
    assert not server.running

    stop = tmp_path / "stop"
    server = nb.start_server(tools_repo)
    threading.Timer(0.2, stop.touch).start()
    assert nb.serve_for(server, 0, stop_file=stop, interval=0.05) == "stop file"
    assert not server.running

    server = nb.start_server(tools_repo)
    threading.Timer(0.2, server.stop).start()
    assert nb.serve_for(server, 60, interval=0.05) == "stopped"


def test_serve_for_ends_on_an_interrupt_and_stops_the_server(tools_repo, tmp_path):
    import _thread

    server = nb.start_server(tools_repo)
    threading.Timer(0.2, _thread.interrupt_main).start()
    assert nb.serve_for(server, stop_file=tmp_path / "never", interval=0.05) == "interrupted"
    assert not server.running


def _wait_until(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_the_live_panel_refreshes_itself_and_its_button_stops_the_server(tools_repo, tmp_path):
    server = nb.start_server(tools_repo)
    panel = nb.ServerPanel(server, interval=0.1)
    try:
        assert panel.live and "no requests yet" in panel.html.value
        store = client_store(server, tools_repo, tmp_path)
        store.get_historical_features(entity_frame(12), FEATURES).to_arrow()
        # Nobody calls refresh(): the panel's own thread shows the request.
        assert _wait_until(lambda: "<td>12</td>" in panel.html.value), panel.html.value
        assert "get_historical_features" in panel.html.value
        # The request's log line, in the panel rather than under some cell.
        assert _wait_until(lambda: "rows_out=12" in panel.html.value)
        assert "rows_out=12" in panel.state.to_text()
        assert not panel.stop_button.disabled

        panel.stop_button.click()  # what a click in JupyterLab runs, in the kernel
        assert not server.running and not panel.live
        assert "stopped" in panel.html.value and "<td>12</td>" in panel.html.value
        assert panel.stop_button.disabled and panel.stop_button.description == "Server stopped"
        assert not nb.server_answers("127.0.0.1", store.config.offline_store.port, timeout=1)
    finally:
        server.stop()
        panel.close()


def test_the_panel_stops_refreshing_once_the_server_stops_elsewhere(tools_repo):
    server = nb.start_server(tools_repo)
    panel = nb.ServerPanel(server, interval=0.05)
    server.stop()
    assert _wait_until(lambda: not panel.live)
    assert "stopped" in panel.html.value and panel.stop_button.disabled
    quiet = nb.ServerPanel(server, live=False)
    assert not quiet.live


def _run_in_a_kernel(cells: list[str], path: Path) -> dict:
    """Execute ``cells`` in a real Jupyter kernel, which inherits this process's
    environment, as papermill does (widget state saved); returns the executed
    notebook, also written to ``path``."""
    import nbformat
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    notebook = new_notebook(cells=[new_code_cell(source) for source in cells])
    NotebookClient(
        notebook,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        store_widget_state=True,
    ).execute()
    nbformat.write(notebook, path)
    return notebook


def test_a_headless_panel_shows_a_text_snapshot_that_ends_stopped(
    tools_repo, tmp_path, monkeypatch
):
    """papermill's view of the ArrowServer notebook: no widget repr
    (``VBox(children=...``) but the panel as text and HTML, replaced in place
    by the final status once the server stops."""
    port = free_port()
    client_repo = tmp_path / "client"
    (client_repo / "data").mkdir(parents=True)
    (client_repo / "feature_store.yaml").write_text(
        client_repo_yaml("127.0.0.1", port, registry=tools_repo / "data" / "registry.db")
    )
    cells = [
        "from feast import FeatureStore\n"
        "from flightlab import notebook as nb\n"
        "from flightlab.testing.sample_repo import entity_frame\n"
        f"server = nb.start_server({str(tools_repo)!r}, port={port})",
        "panel = nb.ServerPanel(server, interval=0.2)\npanel",
        "nb.ServerPanel(server, live=False, headless=False)  # JupyterLab's: the widget",
        f"store = FeatureStore(repo_path={str(client_repo)!r})\n"
        f"store.get_historical_features(entity_frame(20), {FEATURES!r}).to_arrow().num_rows",
        "server.stop()",
        "print(panel.refresh().status_line())",
    ]
    monkeypatch.setenv("FLIGHTLAB_HEADLESS", "1")  # as scripts/run_notebooks.py sets it
    executed = _run_in_a_kernel(cells, tmp_path / "panel.ipynb")

    outputs = [cell["outputs"] for cell in executed["cells"]]
    assert len(outputs[1]) == 1 and outputs[1][0]["output_type"] == "display_data", outputs[1]
    data = outputs[1][0]["data"]
    assert set(data) == {"text/plain", "text/html"}, data.keys()
    final = f"flightlab offline server at grpc+tcp://127.0.0.1:{port}: stopped; 1 requests"
    assert data["text/plain"].startswith(final), data["text/plain"]
    assert "(0 failed), 20 rows sent" in data["text/plain"].splitlines()[0]
    assert "get_historical_features: 1 requests, 0 errors" in data["text/plain"]
    assert "stopped</b>" in data["text/html"] and "<td>20</td>" in data["text/html"]
    assert "VBox(" not in str(outputs[1])
    assert outputs[-1][0]["text"].startswith(final), outputs[-1]
    # The widget panel (headless=False) is what the runner's check flags, and only it.
    assert "application/vnd.jupyter.widget-view+json" in outputs[2][0]["data"]
    runner = _run_notebooks_script()
    flagged = runner.widget_outputs(tmp_path / "panel.ipynb")
    assert [line.split(":")[0] for line in flagged] == ["cell 2"], flagged


def test_a_client_finds_the_announced_server(tools_repo, tmp_path):
    repo = tmp_path / "repo"  # announce only writes into the repo's data folder
    server = nb.start_server(tools_repo)
    try:
        path = nb.announce(server, repo)
        assert path == nb.server_file(repo) and path.is_file()
        assert nb.announced(repo) == ("127.0.0.1", server.port)
        connection = nb.connect_or_start(tools_repo, port=0)
        assert connection.started_here  # tools_repo announced nothing: one is started
        connection.close()
        found = nb.connect_or_start(repo, port=0)
        assert not found.started_here and found.port == server.port
    finally:
        server.stop()
    assert _wait_until(lambda: not path.exists())  # withdrawn once the server stopped
    assert nb.announced(repo) is None

    # A file left by a server that is gone (killed kernel) names nobody.
    path.write_text(f'{{"host": "127.0.0.1", "port": {free_port()}}}')
    assert nb.announced(repo, timeout=1) is None
    path.write_text("not json")
    assert nb.announced(repo) is None


# --- progress --------------------------------------------------------------------------------


def test_a_progress_bar_follows_a_real_remote_retrieval(tools_client):
    job = tools_client.get_historical_features(entity_frame(50), FEATURES)
    with nb.ProgressBar(50, desc="test", disable=False) as bar:
        table = job.to_arrow_with_progress(bar)
        assert bar.bar.n == table.num_rows == 50
        # Every batch (of at most 7 rows: at least 8 of them) reached the bar.
        assert bar.last is not None and bar.last.batches == len(table.to_batches()) >= 8
        assert bar.last.bytes == sum(b.nbytes for b in table.to_batches())

    table = nb.fetch_with_progress(
        tools_client.get_historical_features(entity_frame(30), FEATURES), total=30
    )
    assert table.num_rows == 30


def test_a_headless_progress_bar_prints_one_final_line(tools_client, capsys, monkeypatch):
    monkeypatch.setenv("FLIGHTLAB_HEADLESS", "1")
    assert nb.headless()
    job = tools_client.get_historical_features(entity_frame(40), FEATURES)
    table = nb.fetch_with_progress(job, total=40, desc="remote retrieval")
    assert table.num_rows == 40
    out = capsys.readouterr()
    assert out.out.count("\n") == 1 and out.err == "", out
    line = out.out.strip()
    assert line.startswith("remote retrieval: 100%") and "40.0/40.0 " in line, line
    assert "batches=" in line and "Progress(" not in line

    monkeypatch.setenv("FLIGHTLAB_HEADLESS", "0")
    assert not nb.headless()
    with nb.ProgressBar(5, quiet=True) as bar:
        bar.bar.update(5)
    assert bar.final_line is not None and "100%" in bar.final_line
    assert capsys.readouterr().out.strip() == bar.final_line


# --- timing and plots -------------------------------------------------------------------


def test_time_calls_and_the_timing_frame():
    timings = nb.time_calls({"fast": lambda: None, "slow": lambda: time.sleep(0.02)}, repeat=2)
    assert [len(v) for v in timings.values()] == [2, 2]
    assert min(timings["slow"]) >= 0.02 > max(timings["fast"])
    frame = nb.timing_frame(timings)
    assert frame["retrieval"].tolist() == ["fast", "slow"]
    assert frame["best (s)"].iloc[1] == min(timings["slow"])


def test_timing_chart_bars_are_the_best_runs():
    fig = nb.timing_chart({"local": [1.5, 1.2], "remote": [1.4, 1.6]})
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    assert heights == [1.2, 1.4]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["local", "remote"]
    plt.close(fig)


def test_digit_grid_shows_every_image_with_its_label():
    images = np.random.default_rng(0).random((12, 28, 28))
    fig = nb.digit_grid(images, labels=list(range(12)), ncols=5, title="t")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 12 and len(fig.axes) == 15
    assert [ax.get_title() for ax in shown] == [str(i) for i in range(12)]
    assert shown[0].images[0].get_array().shape == (28, 28)
    plt.close(fig)
    with pytest.raises(ValueError):
        nb.digit_grid(np.empty((0, 28, 28)))


def test_human_bytes():
    assert nb.human_bytes(512) == "512 B"
    assert nb.human_bytes(236_800_032) == "236.8 MB"
    assert nb.human_bytes(3e12) == "3000.0 GB"


def test_setup_keeps_flightlab_logs():
    import logging

    flightlab_logger = logging.getLogger("flightlab")
    level = flightlab_logger.level
    try:
        nb.setup(log_level="info")
        assert flightlab_logger.getEffectiveLevel() == logging.INFO
    finally:
        flightlab_logger.setLevel(level)
