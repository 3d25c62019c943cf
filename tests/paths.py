"""Where the tests find the checkout's own files: the package is installed
without them, so it is told where they are."""

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
