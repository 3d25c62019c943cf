#!/usr/bin/env bash
# Install the browser the JupyterLab browser test drives: Debian's Chromium and
# its chromedriver (/usr/bin/chromium, /usr/bin/chromedriver), from the
# machine's package manager. Nothing is downloaded by hand. Idempotent: a
# machine that has both only gets them checked.
set -euo pipefail

have_browser() {
    command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1
}

if have_browser; then
    echo "browser: $(chromium --version 2>/dev/null | head -1); $(chromedriver --version | head -1)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "browser: chromium and chromedriver are missing and there is no apt-get to install them" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo -n"  # non-interactive: CI has no stdin
fi
echo "browser: installing chromium and chromium-driver with apt-get"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
if ! have_browser; then
    echo "browser: apt-get ran but chromium or chromedriver is still missing" >&2
    exit 1
fi
echo "browser: $(chromium --version 2>/dev/null | head -1); $(chromedriver --version | head -1)"
