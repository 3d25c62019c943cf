"""Where the benchmarks find the checkout's files: the package is installed
without them, so it is told where they are."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MNIST_DEMO = ROOT / "notebooks" / "mnist_demo"
# The shipped MNIST archive and the demo's committed feature repo (the
# template of every MNIST repo the benchmarks write).
MNIST_NPZ = MNIST_DEMO / "data" / "mnist.npz"
MNIST_REPO = MNIST_DEMO / "feature_repo"
