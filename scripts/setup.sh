#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install
# flightlab with its notebook, test and backends extras. Idempotent: a second run only
# re-checks the installed packages.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
fi
echo "setup: installing flightlab[notebooks,test,backends] into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[notebooks,test,backends]"
# The kernel the notebooks run on is this venv's Python.
.venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (flightlab)" >/dev/null
echo "setup: done ($(.venv/bin/python -c 'import feast, pyarrow; print("feast", feast.__version__, "pyarrow", pyarrow.__version__)'))"
