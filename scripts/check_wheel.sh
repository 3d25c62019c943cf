#!/usr/bin/env bash
# flightlab installed as the Dockerfile installs it (`pip install ".[postgres]"`),
# outside the checkout: does it serve?
#
#   bash scripts/check_wheel.sh
#
# In a new temp folder: copy what the Dockerfile copies (pyproject.toml,
# README.md, flightlab/), `pip install` it into a fresh venv (not editable),
# then, from an empty folder and with nothing of the checkout on the path:
#   1. import every flightlab module (flightlab, flightlab.mnist and
#      flightlab.testing among them) and check that none opened, listed or
#      names a path in the checkout, or any scripts/ or notebooks/ folder;
#   2. make the sample repo (flightlab.testing.sample_repo), start the venv's
#      `flightlab -c REPO serve_offline --port 0`, read its port from its
#      serving line, and check that one get_historical_features through a
#      client repo (flightlab.client.RemoteOfflineStore) gives the repo's
#      local FeatureStore answer; then SIGTERM, exit status 0.
# The temp folder goes at the end. It installs Feast and its dependencies from
# the package registry (minutes), so scripts/test.sh does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$PWD
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

work=$(mktemp -d "${TMPDIR:-/tmp}/flightlab-wheel-XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "check_wheel: in $work"

mkdir "$work/src" "$work/empty"
cp pyproject.toml README.md "$work/src/"
tar -c --exclude=__pycache__ flightlab | tar -x -C "$work/src"
"$PYTHON" -m venv "$work/venv"
echo "check_wheel: pip install (a wheel of flightlab, and its dependencies)"
"$work/venv/bin/python" -m pip install --disable-pip-version-check "$work/src[postgres]" \
    >"$work/pip.log" 2>&1 || { tail -n 40 "$work/pip.log"; exit 1; }
rm -rf "$work/src"  # nothing of the sources stays to import from

cd "$work/empty"
env -u PYTHONPATH PYTHONWARNINGS=ignore::DeprecationWarning \
    "$work/venv/bin/python" - "$checkout" "$work" <<'PY'
import os
import pkgutil
import signal
import sys
from pathlib import Path

checkout, work = Path(sys.argv[1]), Path(sys.argv[2])
looked: list[str] = []


def audit(event: str, args: tuple) -> None:
    if event in ("open", "os.listdir", "os.scandir", "glob.glob", "os.chdir") and args:
        looked.append(os.fsdecode(args[0]) if isinstance(args[0], (str, bytes)) else "")


sys.addaudithook(audit)


def checkout_path(text: str) -> bool:
    """A path in the checkout, or in any folder named scripts or notebooks
    (where an installed flightlab would look for the checkout's)."""
    path = Path(text)
    return path.is_relative_to(checkout) or bool({"scripts", "notebooks"} & set(path.parts))


# 1. every module, imported from the installed package, looks at nothing of the checkout.
import flightlab  # noqa: E402
import flightlab.mnist  # noqa: E402, F401
import flightlab.testing  # noqa: E402, F401

where = Path(flightlab.__file__).resolve()
assert where.is_relative_to(work / "venv"), f"flightlab imported from {where}"
# (flightlab.__main__ runs the command line: not imported.)
names = [m.name for m in pkgutil.walk_packages(flightlab.__path__, "flightlab.")]
modules = [__import__(name, fromlist=["_"]) for name in names if name != "flightlab.__main__"]
opened = [path for path in looked if path and checkout_path(path)]
assert not opened, f"importing flightlab looked at {opened}"


def a_path(value: object) -> bool:
    text = str(value)
    return isinstance(value, Path) or (isinstance(value, str) and text.startswith(os.sep))


named = [
    f"{module.__name__}.{attr} = {value}"
    for module in modules
    for attr, value in vars(module).items()
    if not attr.startswith("__") and a_path(value) and checkout_path(str(value))
]
assert not named, f"module globals naming the checkout: {named}"
print(f"check_wheel: imported {len(modules) + 1} modules from {where.parent}; none opened,")
print("  listed or names the checkout, scripts/ or notebooks/")

# 2. serve the sample repo with the installed console script; one retrieval.
import warnings  # noqa: E402

import pandas as pd  # noqa: E402
from feast import FeatureStore  # noqa: E402

# Importing Feast turns deprecation warnings back on; its libraries' are noise here.
warnings.filterwarnings("ignore", category=DeprecationWarning)

from flightlab.testing.processes import running_server  # noqa: E402
from flightlab.testing.sample_repo import (  # noqa: E402
    client_repo_yaml,
    create_sample_repo,
    entity_frame,
)

repo = create_sample_repo(work / "repo")
script = Path(sys.executable).with_name("flightlab")
command = [str(script), "-c", str(repo), "serve_offline", "--port", "0"]
features = [
    "driver_stats:conv_rate",
    "driver_stats:avg_daily_trips",
    "customer_stats:avg_rating",
    "conv_rate_plus_val:conv_rate_plus_val",
]
with running_server(command, log=work / "server.log") as server:
    print(f"check_wheel: {' '.join(command)}\n  said: {server.stdout_lines[-1]}")
    client = work / "client"
    (client / "data").mkdir(parents=True)
    registry = repo / "data" / "registry.db"
    (client / "feature_store.yaml").write_text(
        client_repo_yaml("127.0.0.1", server.port, registry=registry)
    )
    entities = entity_frame(40, seed=5)
    remote = FeatureStore(repo_path=str(client)).get_historical_features(entities, features)
    local = FeatureStore(repo_path=str(repo)).get_historical_features(entities, features)
    keys = ["driver_id", "customer_id", "event_timestamp"]

    def tidy(frame: pd.DataFrame) -> pd.DataFrame:
        columns = keys + sorted(c for c in frame.columns if c not in keys)
        return frame[columns].sort_values(keys).reset_index(drop=True)

    got, expected = tidy(remote.to_df()), tidy(local.to_df())
    pd.testing.assert_frame_equal(got, expected)
    print(f"check_wheel: get_historical_features through the server: {len(got)} rows,")
    print(f"  {len(got.columns)} columns, equal to the local FeatureStore's answer")
    code = server.stop(signal.SIGTERM)
    assert code == 0, f"the server exited with {code}:\n{server.log()[-2000:]}"
    print("check_wheel: SIGTERM: the server exited with status 0")
PY
echo "check_wheel: PASSED"
