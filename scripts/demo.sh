#!/usr/bin/env bash
# The MNIST demo end to end: set up .venv, then execute every notebook headless
# in order (01_prepare_mnist, 02_setup_feast, ArrowServer in the background,
# ArrowClient against it). The executed copies go to out/notebooks/; open
# out/notebooks/ArrowClient.ipynb for the results. Extra arguments go to
# scripts/run_notebooks.py (e.g. --output DIR).
#
#   bash scripts/demo.sh                    # the embedded duckdb store
#   bash scripts/demo.sh --store postgres   # MNIST in a throwaway PostgreSQL
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/run_notebooks.py "$@"
