#!/usr/bin/env bash
# Run only the JupyterLab browser test (tests/test_browser.py): set up the
# environment, install Debian's chromium and chromedriver if missing, then
# drive both notebooks in a real browser. Screenshots go to out/browser/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/browser.sh
exec .venv/bin/python -m pytest tests/test_browser.py -q -s "$@"
