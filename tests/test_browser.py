"""The notebooks as a person uses them: JupyterLab in Debian's Chromium.

ArrowServer.ipynb runs first (Run All: the server serves in the background),
then ArrowClient.ipynb in a second window and kernel, against it. The test
reads what the pages show: the server panel serving, its counters rising
while the client runs, the client's progress bar at 100 %, its plots, no
error. Full-page screenshots go to out/browser/. Both notebooks run with
their default parameters, as an interactive user runs them: the server takes
a free port and announces it in the repo's data folder, where the client
finds it.

Needs /usr/bin/chromium and /usr/bin/chromedriver (``bash scripts/browser.sh``,
which scripts/test.sh runs). Without them it fails in CI and is skipped
elsewhere. ``bash scripts/browser_test.sh`` runs it alone.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import browser_helpers as bh
import pytest
from paths import MNIST_NPZ, MNIST_REPO, NOTEBOOKS, ROOT

SHOTS = ROOT / "out" / "browser"
CLIENT_TIMEOUT = 1200  # seconds for all of ArrowClient (about 3 min on an idle 2-core machine)


@pytest.fixture(scope="module")
def browser_ready():
    missing = bh.browser_missing()
    if missing and os.environ.get("CI"):
        pytest.fail(f"the browser test cannot run in CI: {missing}")
    if missing:
        pytest.skip(missing)


@pytest.fixture(scope="module")
def lab_root(browser_ready, tmp_path_factory) -> Path:
    """A copy of notebooks/ with the MNIST repo made and applied (what the two
    mnist_demo notebooks do), so that nothing in the checkout changes."""
    from flightlab import mnist

    root = bh.copy_notebooks(NOTEBOOKS, tmp_path_factory.mktemp("lab") / "notebooks")
    mnist.create_feature_repo(
        root / "mnist_demo" / "feature_repo", MNIST_REPO, mnist.load_mnist(MNIST_NPZ)
    )
    return root


@pytest.fixture(scope="module")
def lab(lab_root, tmp_path_factory):
    lab = bh.start_lab(lab_root, tmp_path_factory.mktemp("lab-home"))
    yield lab
    lab.stop()


@pytest.fixture(scope="module")
def driver(browser_ready, tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium") / "profile"
    profile.mkdir()
    driver = bh.start_chromium(profile)
    yield driver
    driver.quit()


def saved_errors(path: Path) -> list[str]:
    """Error outputs in a notebook JupyterLab saved: ``ename: evalue`` each."""
    notebook = json.loads(path.read_text())
    return [
        f"{output.get('ename')}: {output.get('evalue')}"
        for cell in notebook["cells"]
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]


def shown_tracebacks(driver) -> list[str]:
    return [c["stderr"][:300] for c in bh.cells(driver) if "Traceback" in c["stderr"]]


@pytest.mark.timeout(CLIENT_TIMEOUT + 600)
def test_the_notebooks_in_jupyterlab(lab, driver):
    try:
        check_the_notebooks(lab, driver)
    except BaseException:
        # What each window showed when it failed, next to the other screenshots.
        for number, window in enumerate(driver.window_handles):
            driver.switch_to.window(window)
            bh.full_page_screenshot(driver, SHOTS / f"failed-window-{number}.png")
        raise


def check_the_notebooks(lab, driver) -> None:
    from flightlab import notebook as nb

    repo = lab.root / "mnist_demo" / "feature_repo"

    # --- ArrowServer: Run All leaves the server serving, the kernel idle ------------
    bh.open_notebook(driver, lab.notebook_url("ArrowServer.ipynb", "server"))
    server_window = driver.current_window_handle
    bh.collapse_left_sidebar(driver)
    bh.run_all(driver)
    bh.wait_for(lambda: bh.all_ran(driver), 180, "every ArrowServer cell to run")
    # The button is a widget of its own, drawn apart from the panel's HTML: wait for both.
    first = bh.wait_for(
        lambda: (f := bh.panel_figures(driver)) and f["button"] == "Stop server" and f,
        30,
        "the server panel and its Stop server button",
    )
    assert first["status"] == "serving", first
    assert first["requests"] == 0 and bh.number(first["rows sent"]) == 0, first
    found = nb.announced(repo)
    assert found is not None, "the server notebook announced no answering server"
    assert first["address"] == nb.location_of(*found)
    assert not shown_tracebacks(driver)

    # --- ArrowClient in a second window and kernel ------------------------------------
    driver.switch_to.new_window("window")
    client_window = driver.current_window_handle
    bh.open_notebook(driver, lab.notebook_url("ArrowClient.ipynb", "client"))
    bh.collapse_left_sidebar(driver)
    bh.run_all(driver)
    samples, fills = [], []
    started = time.monotonic()
    while True:
        driver.switch_to.window(server_window)
        figures = bh.panel_figures(driver)
        samples.append(figures)
        driver.switch_to.window(client_window)
        fills.extend(bar["width"] for bar in bh.progress_bars(driver)[:1])
        if bh.all_ran(driver) and bh.kernel_idle(driver):
            break
        assert not shown_tracebacks(driver), shown_tracebacks(driver)
        assert time.monotonic() - started < CLIENT_TIMEOUT, "ArrowClient did not finish"
        time.sleep(2)
    seconds = time.monotonic() - started

    # The panel refreshed itself (nobody ran a server cell) and counted the
    # client's calls as they came: several distinct, rising request counts.
    assert all(s["status"] == "serving" for s in samples), samples[-1]
    requests = [s["requests"] for s in samples]
    rows = [bh.number(s["rows sent"]) for s in samples]
    assert requests == sorted(requests) and rows == sorted(rows), (requests, rows)
    assert len(set(requests)) >= 3, requests
    assert len(set(rows)) >= 3, rows
    assert rows[-1] >= 3 * 70_000, rows  # the retrieval, the equality check's, the timings
    assert len({s["updated"] for s in samples}) >= 3
    assert "get_historical_features command=" in samples[-1]["log"], samples[-1]["log"]

    # --- what the client page shows --------------------------------------------------
    shown = bh.cells(driver)
    text = "\n".join(c["text"] for c in shown)
    bars = bh.progress_bars(driver)
    assert bars, "no progress bar on the client page"
    assert bars[0]["text"].startswith("remote retrieval: 100%"), bars[0]
    assert "70.0k/70.0k" in bars[0]["text"] and bars[0]["width"] == "100%", bars[0]
    # Then the two parts of the split the server cuts, and nothing else (DuckDB's own?).
    parts = [bar["text"].split(":")[0] for bar in bars[1:]]
    assert parts == ["train part", "test part"], f"other progress widgets on the page: {bars}"
    assert all(bar["width"] == "100%" for bar in bars), bars
    assert "remote features == local features: PASSED" in text
    assert "test accuracy on 10,000 images" in text
    wait_for_each_plot(driver, lab.root / "ArrowClient.ipynb", len(shown))
    assert "already running" in text  # it used the announced server, not one of its own
    assert not shown_tracebacks(driver)

    bh.full_page_screenshot(driver, SHOTS / "ArrowClient.png")
    driver.switch_to.window(server_window)
    serving = bh.panel_figures(driver)
    assert serving["status"] == "serving" and serving["requests"] >= requests[-1]
    bh.full_page_screenshot(driver, SHOTS / "ArrowServer.png")
    # A widget drawn by the server's threads lands under whichever cell ran last
    # (DuckDB draws black bars for its slow queries unless they are turned off).
    assert bh.progress_bars(driver) == [], "progress widgets on the server page"

    # --- Stop server: the button stops it cleanly ---------------------------------------
    from selenium.webdriver.common.by import By

    button = next(
        b for b in driver.find_elements(By.CSS_SELECTOR, "button") if b.text == "Stop server"
    )
    button.click()
    stopped = bh.wait_for(
        lambda: (
            (f := bh.panel_figures(driver))
            and f["status"] == "stopped"
            and f["button"] == "Server stopped"
            and f
        ),
        60,
        "the panel to say stopped",
    )
    assert bh.number(stopped["rows sent"]) == bh.number(serving["rows sent"])
    host, port = found
    # OfflineServer.running turns False as stop() begins, before its service has
    # shut down: the panel's refresher may say stopped while the port still answers.
    bh.wait_for(lambda: not nb.server_answers(host, port, timeout=2), 30, "the port closed")
    bh.wait_for(lambda: not nb.server_file(repo).exists(), 10, "the announcement withdrawn")
    bh.wait_for(lambda: bh.kernel_idle(driver), 30, "the server kernel idle after the stop")
    bh.full_page_screenshot(driver, SHOTS / "ArrowServer-stopped.png")

    # --- saved as JupyterLab saves them: no error output -----------------------------
    bh.save(driver)
    driver.switch_to.window(client_window)
    bh.save(driver)
    for name in ("ArrowServer.ipynb", "ArrowClient.ipynb"):
        saved = lab.root / name
        bh.wait_for(lambda s=saved: "outputs" in s.read_text() and _has_outputs(s), 30, name)
        assert saved_errors(saved) == [], (name, saved_errors(saved))
    print(
        f"\nArrowClient ran in the browser in {seconds:.0f} s; "
        f"server panel: {requests[-1]} requests, {rows[-1]:,} rows sent; "
        f"progress bar fills seen: {sorted(set(fills), key=lambda w: float(w.rstrip('%')))}; "
        f"screenshots in {SHOTS}"
    )


def wait_for_each_plot(driver, notebook: Path, cells_shown: int) -> None:
    """Each plotting cell (the digit grids, the timing chart) shows its own image.

    The page's code cells are the notebook's, in order (every cell is in the
    DOM: LAB_SETTINGS turns windowing off), so the sources say which is which.
    """
    sources = bh.code_sources(notebook)
    assert len(sources) == cells_shown, (len(sources), cells_shown)
    plots = {
        "digit grid": [i for i, s in enumerate(sources) if "nb.digit_grid(" in s],
        "timing chart": [i for i, s in enumerate(sources) if "nb.timing_chart(" in s],
    }
    assert all(plots.values()), f"{notebook.name} lacks a plotting cell: {plots}"

    def without_image() -> list[str]:
        now = bh.cells(driver)
        return [
            f"{name} (code cell {n})"
            for name, ns in plots.items()
            for n in ns
            if not now[n]["images"]
        ]

    try:  # an image counts once the browser has decoded it: wait for each
        bh.wait_for(lambda: not without_image(), 30, "an image in each plotting cell")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; none in {without_image()}") from None


def _has_outputs(path: Path) -> bool:
    notebook = json.loads(path.read_text())
    return any(cell.get("outputs") for cell in notebook["cells"])
