"""What the checkout ships for the notebooks: clean sources, and their environment.

The committed notebooks have no outputs, no execution counts, and one
``parameters`` cell each, which papermill (and so scripts/run_notebooks.py and
the documented ``-p`` overrides) injects after. ``environment.yml`` (for conda
users) installs what the notebooks need. Fast: reads the files only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from paths import MNIST_DEMO, NOTEBOOKS, ROOT

NOTEBOOK_FILES = sorted([*NOTEBOOKS.glob("*.ipynb"), *MNIST_DEMO.glob("*.ipynb")])


def test_the_notebooks_are_found():
    names = {path.name for path in NOTEBOOK_FILES}
    assert {"ArrowServer.ipynb", "ArrowClient.ipynb", "01_prepare_mnist.ipynb"} <= names, names


def _problems(notebook: dict) -> list[str]:
    """What makes a notebook unfit to commit, one line each."""
    problems = []
    for number, cell in enumerate(notebook["cells"]):
        if cell.get("outputs"):
            problems.append(f"cell {number} has {len(cell['outputs'])} outputs")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {number} has execution count {cell['execution_count']}")
    tagged = [
        (number, cell["cell_type"])
        for number, cell in enumerate(notebook["cells"])
        if "parameters" in cell.get("metadata", {}).get("tags", [])
    ]
    if len(tagged) != 1:
        problems.append(f"{len(tagged)} cells tagged 'parameters' (cells {[n for n, _ in tagged]})")
    elif tagged[0][1] != "code":
        problems.append(f"the 'parameters' cell {tagged[0][0]} is {tagged[0][1]}, not code")
    if "widgets" in notebook.get("metadata", {}):
        problems.append("saved widget state in the notebook's metadata")
    return problems


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_committed_notebook_has_no_outputs_and_one_parameters_cell(path: Path):
    assert _problems(json.loads(path.read_text())) == []


def test_the_check_finds_what_an_executed_notebook_has():
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    parameters = new_code_cell("x = 1", metadata={"tags": ["parameters"]})
    assert _problems(new_notebook(cells=[parameters, new_code_cell("x")])) == []

    ran = new_code_cell("x", execution_count=3, outputs=[new_output("stream", text="1\n")])
    executed = new_notebook(cells=[parameters, ran], metadata={"widgets": {}})
    assert _problems(executed) == [
        "cell 1 has 1 outputs",
        "cell 1 has execution count 3",
        "saved widget state in the notebook's metadata",
    ]
    twice = new_notebook(cells=[parameters, parameters])
    assert _problems(twice) == ["2 cells tagged 'parameters' (cells [0, 1])"]
    assert _problems(new_notebook(cells=[new_code_cell("x")])) == [
        "0 cells tagged 'parameters' (cells [])"
    ]


def test_environment_yml_covers_what_the_notebooks_need():
    import re
    import tomllib

    import yaml

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # The core dependencies come with flightlab itself (-e .); the notebook
    # extra is listed one by one.
    wanted = project["optional-dependencies"]["notebooks"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {re.split(r"[<>=\[ ]", spec, maxsplit=1)[0].lower() for spec in pip}
    for requirement in wanted:
        name = re.split(r"[<>=\[ ]", requirement, maxsplit=1)[0].lower()
        assert name in listed, f"environment.yml lacks {name}"
    assert any(spec.startswith("-e .[notebooks") for spec in pip)
