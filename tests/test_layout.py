"""The package's layout keeps its promises: no import cycles, small modules,
and layers that do not reach past each other.

Read from the source with :mod:`ast`, so every import counts: at the top,
inside functions, and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from paths import ROOT

PACKAGE = ROOT / "flightlab"
MAX_MODULE_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_names(path: Path) -> set[str]:
    """Every module name an import statement in ``path`` names, in full."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def flightlab_imports(path: Path) -> set[str]:
    """The flightlab modules ``path`` imports (a name that is not a module of
    ours, such as a class, is left out; so is the module itself)."""
    return {name for name in imported_names(path) if name in MODULES} - {module_name(path)}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


def test_no_module_imports_itself_back():
    graph = {name: flightlab_imports(path) for name, path in MODULES.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_is_over_the_line_budget():
    long = {
        name: lines
        for name, path in MODULES.items()
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, long


def test_the_engine_storage_and_errors_know_nothing_of_flight():
    """Flight is the wire's business: these layers name failures by kind."""
    layers = ("engine", "storage", "dispatch", "operations")
    for name, path in MODULES.items():
        if name.startswith(tuple(f"flightlab.{layer}" for layer in layers)) or (
            name == "flightlab.errors"
        ):
            flight = {n for n in imported_names(path) if n.startswith("pyarrow.flight")}
            assert not flight, (name, flight)


def test_the_installed_package_names_no_checkout_folder():
    """A wheel holds flightlab/ only: nothing in it may look for the checkout's
    scripts/ or notebooks/."""
    for name, path in MODULES.items():
        text = path.read_text()
        assert "parents[1]" not in text and "parents[2]" not in text, name
        assert '"scripts"' not in text and '"notebooks"' not in text, name
