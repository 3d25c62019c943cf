"""JupyterLab and Debian's Chromium for the browser test: start a lab server
from this environment, drive the system browser with selenium, read what a
notebook page shows.

No browser is downloaded: scripts/browser.sh installs ``chromium`` and
``chromium-driver`` from the machine's package manager.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flightlab.testing.processes import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

# As root on a closed network: no sandbox, no GPU, and none of the browser's
# own background traffic (update checks, sync, QUIC), which is refused in bulk
# here and slows every page. The backgrounding flags keep both notebook
# windows rendering while the test looks at the other one.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--hide-scrollbars",
)

# JupyterLab settings for a test: every cell in the DOM (no windowing, so a
# full-page screenshot and the checks see all of them), no news or update
# pop-ups.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {
        "windowingMode": "none",
        "scrollPastEnd": False,  # else each taller page adds as much blank space below
    },
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "checkForUpdates": False,
        "fetchNews": "false",
    },
}


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        return f"{' and '.join(missing)} missing: bash scripts/browser.sh installs them"
    return None


@dataclass
class Lab:
    """A JupyterLab server on a loopback port, serving ``root``."""

    root: Path
    port: int
    token: str
    process: subprocess.Popen
    log_path: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}?token={self.token}"

    def notebook_url(self, notebook: str, workspace: str) -> str:
        """The notebook in its own workspace: two windows do not share a layout."""
        return self.url(f"lab/workspaces/{workspace}/tree/{notebook}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # JupyterLab shuts its kernels down on SIGTERM
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def start_lab(root: Path, home: Path, timeout: float = 120) -> Lab:
    """JupyterLab from this venv, with its settings, config and runtime files
    in ``home`` (nothing outside the temporary folders changes)."""
    settings = home / "settings"
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    token = secrets.token_hex(16)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "FLIGHTLAB_HEADLESS"}  # widgets here
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTER_DATA_DIR=str(home / "data"),
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={settings}",
        f"--LabApp.workspaces_dir={home / 'workspaces'}",
        "--LabApp.news_url=",
        "--ServerApp.terminals_enabled=False",
        "--ServerApp.allow_root=True",  # CI runs as root
    ]
    log_path = home / "jupyterlab.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    lab = Lab(root, port, token, process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited ({process.returncode}):\n{lab.log()}")
        try:
            with urllib.request.urlopen(lab.url("api/status"), timeout=5) as answer:
                if answer.status == 200:
                    return lab
        except OSError:
            time.sleep(0.5)
    lab.stop()
    raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n{lab.log()}")


def start_chromium(profile: Path, width: int = 1400, height: int = 1000) -> Any:
    """Debian's Chromium, headless, through Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    service = Service(str(CHROMEDRIVER), log_output=str(profile.parent / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(120)
    return driver


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll ``condition`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# JavaScript run in a notebook page: what its cells show.
CELLS_JS = """
return Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell')).map(cell => {
  const prompt = cell.querySelector('.jp-InputArea-prompt');
  const outputs = Array.from(cell.querySelectorAll('.jp-OutputArea-output'));
  return {
    prompt: prompt ? prompt.innerText.trim() : '',
    text: outputs.map(o => o.innerText).join('\\n'),
    stderr: Array.from(cell.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
    )).map(o => o.innerText).join('\\n'),
    images: Array.from(cell.querySelectorAll('.jp-RenderedImage img'))
      .filter(img => img.complete && img.naturalWidth > 0).length,
  };
});
"""

# The server panel's figures, read from its HTML tables.
PANEL_JS = """
const panel = Array.from(document.querySelectorAll('.widget-html-content'))
  .find(el => el.innerText.includes('flightlab offline server'));
if (!panel) return null;
const figures = {};
for (const row of panel.querySelectorAll('tr')) {
  const th = row.querySelector('th'), td = row.querySelector('td');
  if (th && td) figures[th.innerText.trim()] = td.innerText.trim();
}
let requests = 0;
for (const row of panel.querySelectorAll('tr')) {
  const cells = row.querySelectorAll('td');
  if (cells.length === 3 && cells[0].querySelector('code')) {
    requests += parseInt(cells[1].innerText);
  }
}
figures.requests = requests;
const log = panel.querySelector('pre');
figures.log = log ? log.innerText : '';
const button = Array.from(document.querySelectorAll('button'))
  .find(b => b.innerText.includes('Stop server') || b.innerText.includes('Server stopped'));
figures.button = button ? button.innerText.trim() : null;
return figures;
"""

# tqdm's notebook bars: their label, their counts, how full the bar is drawn.
PROGRESS_JS = """
return Array.from(document.querySelectorAll('.widget-hprogress')).map(bar => {
  const box = bar.closest('.widget-hbox') || bar.parentElement;
  const fill = bar.querySelector('.progress-bar');
  return {
    text: box.innerText.trim(),
    width: fill ? fill.style.width : null,
  };
});
"""


def _plain(text: str) -> str:
    """Widgets space their text with figure spaces (U+2007)."""
    return text.replace("\u2007", " ")


def cells(driver: Any) -> list[dict[str, Any]]:
    shown = driver.execute_script(CELLS_JS)
    for cell in shown:
        cell["text"] = _plain(cell["text"])
    return shown


def all_ran(driver: Any) -> bool:
    """Every code cell has run: a numbered prompt, none waiting (``[*]``)."""
    shown = cells(driver)
    return bool(shown) and all(c["prompt"][1:-2].strip().isdigit() for c in shown)


def kernel_idle(driver: Any) -> bool:
    return bool(
        driver.execute_script(
            "const s = document.querySelector('.jp-Notebook-ExecutionIndicator');"
            "return s && s.getAttribute('data-status') === 'idle';"
        )
    )


def panel_figures(driver: Any) -> dict[str, Any] | None:
    return driver.execute_script(PANEL_JS)


def progress_bars(driver: Any) -> list[dict[str, Any]]:
    bars = driver.execute_script(PROGRESS_JS)
    for bar in bars:
        bar["text"] = _plain(bar["text"])
    return bars


def code_sources(path: Path) -> list[str]:
    """The sources of a notebook's code cells, in order (as the page lists them)."""
    notebook = json.loads(path.read_text())
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def number(text: str) -> int:
    """``"70,000"`` -> 70000 (the panel's figures)."""
    return int(text.replace(",", "").split()[0])


KERNEL_NAME_JS = (
    "const k = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)"
    " .jp-KernelName'); return k ? k.innerText : '';"
)


def choose_project_kernel(driver: Any) -> bool:
    """JupyterLab asks which kernel to start when it opens a notebook before it
    has listed the kernels (a busy machine). Pick the project's kernel in that
    dialog once it is listed. True if there was such a dialog."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    for dialog in driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog"):
        if "Kernel" not in dialog.text:
            continue
        select = Select(dialog.find_element(By.TAG_NAME, "select"))
        wanted = [o for o in select.options if "flightlab" in o.text]
        if not wanted:
            return True  # not listed yet: look again
        select.select_by_visible_text(wanted[0].text)
        dialog.find_element(By.CSS_SELECTOR, ".jp-Dialog-button.jp-mod-accept").click()
        return True
    return False


def open_notebook(driver: Any, url: str, timeout: float = 180) -> None:
    driver.get(url)
    wait_for(lambda: cells(driver), timeout, f"the notebook's cells at {url}")

    def project_kernel_idle() -> bool:
        if choose_project_kernel(driver):
            return False
        if driver.execute_script(KERNEL_NAME_JS) == "No Kernel":
            click_menu(driver, "Kernel", "kernelmenu:change")  # opens the dialog above
            return False
        return kernel_idle(driver)

    wait_for(project_kernel_idle, timeout, "the project's kernel, idle", interval=1.0)
    kernel = driver.execute_script(KERNEL_NAME_JS)
    assert "flightlab" in kernel, f"the notebook runs on {kernel!r}, not the project's kernel"


def click_menu(driver: Any, menu: str, command: str) -> None:
    """Click a main-menu entry, as a person would: ``Run`` > ``Run All Cells``."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    ActionChains(driver).send_keys(Keys.ESCAPE).perform()  # no menu left open
    items = driver.find_elements(By.CSS_SELECTOR, "#jp-MainMenu .lm-MenuBar-item")
    item = next(i for i in items if i.text.strip() == menu)
    item.click()
    entry = wait_for(
        lambda: driver.find_elements(By.CSS_SELECTOR, f".lm-Menu-item[data-command='{command}']"),
        10,
        f"the {menu} menu's {command}",
    )[0]
    entry.click()


def run_all(driver: Any) -> None:
    click_menu(driver, "Run", "runmenu:run-all")


def save(driver: Any) -> None:
    click_menu(driver, "File", "docmanager:save")


def collapse_left_sidebar(driver: Any) -> None:
    """More room for the notebook: close the file browser (click its tab)."""
    from selenium.webdriver.common.by import By

    for tab in driver.find_elements(
        By.CSS_SELECTOR, ".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current"
    ):
        tab.click()


# The notebook's scroller: JupyterLab scrolls inside the notebook panel, not the page.
SCROLLER_JS = (
    "const s = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)"
    " .jp-WindowedPanel-outer');"
)


def full_page_screenshot(driver: Any, path: Path, width: int = 1400) -> Path:
    """The whole notebook, not only the window: grow the page until the
    notebook panel has nothing left to scroll, then capture it."""
    import base64

    height = driver.execute_script("return document.documentElement.clientHeight;")
    try:
        for _ in range(4):  # the layout settles at the new size; measure again
            driver.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
            time.sleep(1.0)
            hidden = driver.execute_script(
                SCROLLER_JS + "s.scrollTop = 0; return s.scrollHeight - s.clientHeight;"
            )
            if hidden <= 0 or height >= 16000:
                break
            height = min(height + int(hidden) + 20, 16000)
        time.sleep(0.5)
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def copy_notebooks(source: Path, target: Path) -> Path:
    """The project's notebooks without any data made by running them."""
    shutil.copytree(
        source,
        target,
        ignore=shutil.ignore_patterns("data", ".ipynb_checkpoints", "__pycache__"),
    )
    shutil.copytree(source / "mnist_demo" / "data", target / "mnist_demo" / "data")
    return target
