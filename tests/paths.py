"""Where the tests find the checkout's own files: the package is installed
without them, so it is told where they are. And scripts/run_notebooks.py,
loaded as a module, for the tests that call its checks."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
NOTEBOOKS = ROOT / "notebooks"
DEPLOY = ROOT / "deploy"
MNIST_DEMO = NOTEBOOKS / "mnist_demo"
# The shipped MNIST archive (with its attribution next to it) and the demo's
# committed feature repo (feature_store.yaml and definitions), the template of
# every MNIST repo the tests write.
MNIST_NPZ = MNIST_DEMO / "data" / "mnist.npz"
MNIST_REPO = MNIST_DEMO / "feature_repo"


def _run_notebooks_script():
    import importlib.util

    path = SCRIPTS / "run_notebooks.py"
    spec = importlib.util.spec_from_file_location("run_notebooks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
