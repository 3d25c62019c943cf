#!/usr/bin/env bash
# Set up the environment, then run every check: ruff, the pytest suite (with
# the JupyterLab browser test, tests/test_browser.py), and every notebook
# headless (scripts/run_notebooks.py, when present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Debian's chromium and chromedriver for the browser test; a failed install
# stops the run here (in CI the test would fail without them anyway).
bash scripts/browser.sh
# PostgreSQL and Java for the backend tests (the tests start their own cluster).
bash scripts/backends.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "test: ruff"
ruff check .
ruff format --check .
echo "test: pytest"
python -m pytest "$@"
if [ -f scripts/run_notebooks.py ]; then
    echo "test: notebooks"
    python scripts/run_notebooks.py --output out/ci-notebooks --ci
fi
