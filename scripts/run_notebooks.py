#!/usr/bin/env python
"""Execute every flightlab notebook headless, in order, with papermill.

1. ``notebooks/mnist_demo/01_prepare_mnist.ipynb`` and ``02_setup_feast.ipynb``;
2. ``notebooks/ArrowServer.ipynb`` in the background, on a free port;
3. once that server answers, ``notebooks/ArrowClient.ipynb`` against it
   (``start_server=False``);
4. then the server notebook is told to stop (its ``stop_file`` appears) and
   must end cleanly.

The executed copies go to ``--output`` (default ``out/notebooks``). Any cell
error, a server that never answers or an executed client notebook without its
results (the equality check, the accuracy, the plots) makes the exit code
non-zero, and so does a widget (or its text repr, ``VBox(...)``) in an
executed copy: headless runs show progress and the server panel as text.

    python scripts/run_notebooks.py                 # the demo
    python scripts/run_notebooks.py --output out/ci-notebooks --ci
    python scripts/run_notebooks.py --store postgres   # the proof of concept's backend

``--store postgres`` starts a throwaway PostgreSQL (scripts/backends.sh installs
it where missing; flightlab.testing.postgres runs the cluster), loads
MNIST into it and runs the same notebooks on a repo whose offline store is
Feast's postgres store (``<output>/feature_repo_postgres``); the cluster is
removed at the end. The default is the committed repo on the embedded duckdb store.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DEMO = NOTEBOOKS / "mnist_demo"
HOST = "127.0.0.1"
KERNEL = "python3"
SERVE_SECONDS = 1800  # the server notebook's upper bound; the stop file ends it sooner
CELL_TIMEOUT = 1200

sys.path.insert(0, str(ROOT))


class RunFailed(Exception):
    pass


def log(message: str) -> None:
    print(f"[run_notebooks {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def execute(notebook: Path, output: Path, parameters: dict, cwd: Path) -> float:
    """Run one notebook in the foreground; returns the seconds it took."""
    import papermill

    log(f"running {_shown(notebook)} -> {output}")
    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters,
            cwd=str(cwd),
            kernel_name=KERNEL,
            progress_bar=False,
            execution_timeout=CELL_TIMEOUT,
            store_widget_state=True,  # widgets shown stay viewable in the copy (nbclient default)
        )
    except Exception as exc:  # PapermillExecutionError names the cell and the error
        raise RunFailed(f"{notebook.name} failed: {exc}") from exc
    seconds = time.perf_counter() - started
    log(f"ok {notebook.name} ({seconds:.0f} s)")
    return seconds


def start_background(notebook: Path, output: Path, parameters: dict, cwd: Path, log_path: Path):
    """Start papermill on ``notebook`` in a child process; returns it."""
    command = [sys.executable, "-m", "papermill", str(notebook), str(output)]
    for name, value in parameters.items():
        command += ["-p", name, str(value)]
    command += [
        "--cwd",
        str(cwd),
        "-k",
        KERNEL,
        "--no-progress-bar",
        "--log-output",
        "--execution-timeout",
        str(SERVE_SECONDS + CELL_TIMEOUT),
    ]
    log(f"starting {_shown(notebook)} in the background (log: {log_path})")
    handle = open(log_path, "w")  # closed by stop_background
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    process.log_handle = handle  # type: ignore[attr-defined]
    return process


def stop_background(process, stop_file: Path, timeout: float = 120) -> int:
    """Ask the server notebook to stop; wait for it; kill it if it will not."""
    stop_file.touch()
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"the server notebook did not stop within {timeout:.0f} s: terminating it")
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return -1
    finally:
        process.log_handle.close()


def outputs_text(path: Path) -> tuple[str, int]:
    """All text outputs of an executed notebook, and how many images it shows."""
    notebook = json.loads(path.read_text())
    texts, images = [], 0
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            if "text" in output:
                texts.append("".join(output["text"]))
            data = output.get("data", {})
            if "image/png" in data:
                images += 1
            for kind in ("text/plain", "text/html"):
                if kind in data:
                    texts.append("".join(data[kind]))
    return "\n".join(texts), images


# What a widget leaves in a notebook run without a page: its text repr. Headless
# runs must show text instead (flightlab.notebook: progress lines, panel snapshots).
WIDGET_REPRS = ("FloatProgress(", "IntProgress(", "VBox(", "HBox(", "Button(")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def widget_outputs(path: Path) -> list[str]:
    """The outputs of an executed notebook that are widgets or their reprs."""
    notebook = json.loads(path.read_text())
    found = []
    for number, cell in enumerate(notebook["cells"]):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            text = "".join(output.get("text", "")) + "".join(data.get("text/plain", ""))
            reprs = [r for r in WIDGET_REPRS if r in text]
            if WIDGET_VIEW in data or reprs:
                found.append(f"cell {number}: {(reprs or [WIDGET_VIEW])[0]} {text[:60]!r}")
    return found


def _widget_problem(path: Path) -> list[str]:
    found = widget_outputs(path)
    return [f"widget output where text belongs ({'; '.join(found[:3])})"] if found else []


def check_client_results(path: Path) -> str:
    """The executed client notebook must show its results; returns the accuracy line."""
    text, images = outputs_text(path)
    problems = []
    if "remote features == local features: PASSED" not in text:
        problems.append("the remote == local check did not pass")
    accuracy = next((line for line in text.splitlines() if "test accuracy" in line), None)
    if accuracy is None:
        problems.append("no test accuracy")
    # The headless progress bar's one final line (flightlab.notebook.progress).
    if not any(line.startswith("remote retrieval: 100%") for line in text.splitlines()):
        problems.append("no final 'remote retrieval: 100%' progress line")
    if images < 3:  # digit grid, predictions grid, timing chart
        problems.append(f"only {images} plots")
    problems += _widget_problem(path)
    if problems:
        raise RunFailed(f"{path.name} lacks its results: {'; '.join(problems)}")
    return f"{accuracy.strip()}; {images} plots"


def check_server_results(path: Path) -> str:
    """The executed server notebook must show its panel as a text snapshot that
    ends stopped (updated in place); returns the panel's final status line."""
    notebook = json.loads(path.read_text())
    shown = [
        "".join(output["data"]["text/plain"])
        for cell in notebook["cells"]
        for output in cell.get("outputs", [])
        if output.get("output_type") == "display_data" and "text/plain" in output.get("data", {})
    ]
    first_lines = [text.splitlines()[0] for text in shown if text.strip()]
    panel = [line for line in first_lines if line.startswith("flightlab offline server at")]
    problems = _widget_problem(path)
    if not panel:
        problems.append("no server panel snapshot")
    elif ": stopped;" not in panel[-1]:
        problems.append(f"the server panel does not end stopped: {panel[-1]!r}")
    if problems:
        raise RunFailed(f"{path.name} lacks its results: {'; '.join(problems)}")
    return panel[-1]


def run(output: Path, ci: bool, store: str = "duckdb") -> None:
    output.mkdir(parents=True, exist_ok=True)
    if store == "duckdb":
        run_profile(output, ci, {}, {})
        return
    from flightlab.mnist import load_mnist
    from flightlab.mnist.postgres_repo import create_postgres_feature_repo
    from flightlab.testing.postgres import start_postgres

    # PostgreSQL where missing, as for the backend tests.
    subprocess.run(["bash", str(ROOT / "scripts" / "backends.sh")], check=True)
    log("starting a throwaway PostgreSQL (flightlab.testing.postgres)")
    server = start_postgres()
    try:
        repo = output / "feature_repo_postgres"
        log(f"loading MNIST into PostgreSQL on port {server.port}; repo {_shown(repo)}")
        started = time.perf_counter()
        data = load_mnist(DEMO / "data" / "mnist.npz")
        create_postgres_feature_repo(repo, server, DEMO / "feature_repo", data)
        log(f"loaded in {time.perf_counter() - started:.0f} s")
        run_profile(output, ci, {"repo": str(repo)}, {"repo": str(repo), "profile": store})
    finally:
        log("stopping PostgreSQL")
        server.stop()


def run_profile(output: Path, ci: bool, demo_params: dict, client_params: dict) -> None:
    """The notebooks in order; ``demo_params`` go to the mnist_demo notebooks and
    the server's, ``client_params`` to the client's (both name the repo)."""
    from flightlab.notebook import server_answers, wait_for_server
    from flightlab.testing.processes import free_port

    total = time.perf_counter()
    execute(DEMO / "01_prepare_mnist.ipynb", output / "01_prepare_mnist.ipynb", demo_params, DEMO)
    execute(DEMO / "02_setup_feast.ipynb", output / "02_setup_feast.ipynb", demo_params, DEMO)

    port = free_port(HOST)
    stop_file = output / ".arrow_server.stop"
    stop_file.unlink(missing_ok=True)
    server = start_background(
        NOTEBOOKS / "ArrowServer.ipynb",
        output / "ArrowServer.ipynb",
        {
            "host": HOST,
            "port": port,
            "serve_seconds": SERVE_SECONDS,
            "stop_file": stop_file,
            **demo_params,
        },
        NOTEBOOKS,
        output / "ArrowServer.log",
    )
    client_error: BaseException | None = None
    try:
        log(f"waiting for the server at {HOST}:{port}")
        if not wait_for_server(HOST, port, timeout=300, alive=lambda: server.poll() is None):
            raise RunFailed(
                f"the ArrowServer notebook never answered on port {port} "
                f"(see {output / 'ArrowServer.log'})"
            )
        log(f"server answers at {HOST}:{port}")
        execute(
            NOTEBOOKS / "ArrowClient.ipynb",
            output / "ArrowClient.ipynb",
            {
                "host": HOST,
                "port": port,
                "start_server": False,
                "timing_runs": 2 if ci else 3,
                **client_params,
            },
            NOTEBOOKS,
        )
    except BaseException as exc:
        client_error = exc
    finally:
        log("stopping the server notebook")
        code = stop_background(server, stop_file)
        stop_file.unlink(missing_ok=True)
    if client_error is not None:
        raise client_error
    if code != 0:
        raise RunFailed(f"ArrowServer.ipynb failed (exit {code}; see {output / 'ArrowServer.log'})")
    if server_answers(HOST, port, timeout=2):
        raise RunFailed(f"something still answers on port {port} after the server stopped")
    log("ok ArrowServer.ipynb (served, then shut down cleanly)")
    log(f"ArrowServer panel: {check_server_results(output / 'ArrowServer.ipynb')}")
    log(f"ArrowClient results: {check_client_results(output / 'ArrowClient.ipynb')}")
    log(f"all notebooks ran in {time.perf_counter() - total:.0f} s; executed copies in {output}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("out/notebooks"),
        help="folder for the executed notebooks (default: out/notebooks)",
    )
    parser.add_argument(
        "--ci", action="store_true", help="CI run: fewer timing repeats, same checks"
    )
    parser.add_argument(
        "--store",
        choices=("duckdb", "postgres"),
        default="duckdb",
        help="the server repo's offline store (default: duckdb, embedded)",
    )
    args = parser.parse_args(argv)
    output = args.output if args.output.is_absolute() else ROOT / args.output
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quieter kernels
    # No page draws widgets here: progress bars print one final line instead
    # (flightlab.notebook.progress); the kernels inherit this.
    os.environ["FLIGHTLAB_HEADLESS"] = "1"
    try:
        run(output, args.ci, args.store)
    except RunFailed as exc:
        log(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
