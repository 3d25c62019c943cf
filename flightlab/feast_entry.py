"""``feast ... serve_offline ...`` served by flightlab, for images run by Feast's Helm chart.

Feast's ``feast-feature-server`` chart, in ``feast_mode: offline``, runs the
fixed command ``feast --log-level LEVEL serve_offline -h 0.0.0.0``. The
flightlab image installs ``deploy/feast`` (``python -m flightlab.feast_entry``)
ahead of Feast's own script, so that command starts ``flightlab
serve_offline`` with the same options; any other ``feast`` command runs
Feast's CLI unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Feast's log levels that flightlab's --log-level does not name.
_LOG_LEVELS = {"critical": "error"}
# Feast's group options that take a value (feast [OPTIONS] COMMAND ...).
_GROUP_OPTIONS = {"-c": "chdir", "--chdir": "chdir", "--log-level": "log_level"}
_GROUP_OPTIONS.update({"-f": "fs_yaml", "--feature-store-yaml": "fs_yaml"})


def flightlab_argv(feast_argv: list[str]) -> list[str] | None:
    """flightlab's arguments for a ``feast`` command line; None when it is not
    ``serve_offline`` (then Feast's CLI should run it)."""
    group: dict[str, str] = {}
    rest = list(feast_argv)
    while rest and rest[0] in _GROUP_OPTIONS and len(rest) > 1:
        group[_GROUP_OPTIONS[rest[0]]] = rest[1]
        rest = rest[2:]
    if not rest or rest[0] != "serve_offline":
        return None
    argv: list[str] = []
    if "fs_yaml" in group:
        fs_yaml = Path(group["fs_yaml"])
        if fs_yaml.name != "feature_store.yaml":
            raise SystemExit(
                "flightlab: -f must name a file called feature_store.yaml (its folder is the repo)"
            )
        argv += ["-c", str(fs_yaml.parent)]
    elif "chdir" in group:
        argv += ["-c", group["chdir"]]
    argv += rest
    if "log_level" in group:
        level = group["log_level"].lower()
        argv += ["--log-level", _LOG_LEVELS.get(level, level)]
    return argv


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    translated = flightlab_argv(argv)
    if translated is None:
        from feast.cli.cli import cli

        return cli.main(args=argv, prog_name="feast")
    from flightlab.cli import main as flightlab_main

    return flightlab_main(translated)


if __name__ == "__main__":
    sys.exit(main())
