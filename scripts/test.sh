#!/usr/bin/env bash
# Set up the environment, then run every check: ruff, the pytest suite, and
# every notebook headless (scripts/run_notebooks.py, when present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
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
