"""The checks scripts/run_notebooks.py makes of an executed notebook.

The runner executes the notebooks headless (``FLIGHTLAB_HEADLESS=1``) and then
fails a run whose notebook does not show its results as text: the client
notebook must print remote == local, the final line of its progress bar and
the accuracy, and show its plots; the server notebook's panel must be a text
and HTML snapshot that ends stopped. A widget, or a widget's text repr, where
text belongs fails the run, naming the cell. Checked on small synthetic
notebooks: no kernel runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from paths import _run_notebooks_script


def _synthetic_notebook(path: Path, outputs: list[dict]) -> Path:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nbformat.write(new_notebook(cells=[new_code_cell(outputs=[o]) for o in outputs]), path)
    return path


def _stream(text: str) -> dict:
    from nbformat.v4 import new_output

    return new_output("stream", text=text)


def _shown(data: dict) -> dict:
    from nbformat.v4 import new_output

    return new_output("display_data", data=data)


PNG = {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}
FINAL_BAR = "remote retrieval: 100%|##########| 70.0k/70.0k [00:04<00:00, 16.1krows/s]\n"
BAR_WIDGET = {
    "text/plain": "  0%|          | 0/70000 [00:00<?, ?rows/s]",
    "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2},
}


def test_the_runner_checks_the_client_notebook_shows_its_results(tmp_path):
    runner = _run_notebooks_script()
    results = [
        _stream("70,000 rows, 32 columns, 236 MB\n"),
        _stream("remote features == local features: PASSED\n"),
        _stream("test accuracy on 10,000 images: 0.9710\n"),
        *[_shown(PNG) for _ in range(3)],
    ]
    good = _synthetic_notebook(tmp_path / "good.ipynb", [_stream(FINAL_BAR), *results])
    assert "0.9710" in runner.check_client_results(good)

    bad = _synthetic_notebook(tmp_path / "bad.ipynb", results[2:4])
    with pytest.raises(
        runner.RunFailed, match="remote == local.*no final 'remote retrieval: 100%'.*only 1 plots"
    ):
        runner.check_client_results(bad)

    # A bar that never finished, and one left as a widget's text repr.
    for name, bar in [
        ("unfinished", _stream(FINAL_BAR.replace("100%", " 40%"))),
        ("repr", _shown({"text/plain": "FloatProgress(value=0.0, max=70000.0)"})),
    ]:
        path = _synthetic_notebook(tmp_path / f"{name}.ipynb", [bar, *results])
        with pytest.raises(runner.RunFailed, match="remote retrieval: 100%"):
            runner.check_client_results(path)
    for name, widget in [
        ("float-progress", _stream("FloatProgress(value=0.0, max=70000.0)\n")),
        ("widget-view", _shown(BAR_WIDGET)),
    ]:
        path = _synthetic_notebook(
            tmp_path / f"{name}.ipynb", [_stream(FINAL_BAR), widget, *results]
        )
        with pytest.raises(runner.RunFailed, match="widget output where text belongs.*cell 1"):
            runner.check_client_results(path)


def test_the_runner_checks_the_server_panel_is_text_and_ends_stopped(tmp_path):
    runner = _run_notebooks_script()
    at = "flightlab offline server at grpc+tcp://127.0.0.1:4000"
    stopped = at + ": stopped; 9 requests (0 failed), 280,000 rows sent (945.6 MB)"

    def panel(first_line: str) -> dict:
        return _shown({"text/plain": first_line + "\n  staged commands: 0", "text/html": "<div>"})

    good = _synthetic_notebook(tmp_path / "good.ipynb", [_stream("serving\n"), panel(stopped)])
    assert runner.check_server_results(good) == stopped

    serving = _synthetic_notebook(
        tmp_path / "serving.ipynb", [panel(at + ": serving; 0 requests (0 failed), 0 rows sent")]
    )
    with pytest.raises(runner.RunFailed, match="does not end stopped"):
        runner.check_server_results(serving)
    # The panel as ipywidgets leaves it without a page: its repr, no snapshot.
    vbox = _shown({"text/plain": "VBox(children=(HTML(value='<div style=...'),))"})
    widget = _synthetic_notebook(tmp_path / "widget.ipynb", [vbox])
    with pytest.raises(runner.RunFailed, match="widget output.*VBox.*no server panel snapshot"):
        runner.check_server_results(widget)
