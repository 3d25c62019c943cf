"""Configuration from the environment, as a container is configured.

Every option of ``flightlab`` and ``flightlab serve_offline`` has an
environment variable, derived from its long name: ``--max-staged-bytes`` is
``FLIGHTLAB_MAX_STAGED_BYTES``. A variable sets the option's default, so a
flag on the command line still wins. The names come from the parser itself,
so a new option has its variable without anyone listing it.

``FEATURE_STORE_YAML_BASE64`` is what Feast's Helm chart and server image
pass: the repo's ``feature_store.yaml``, base64-encoded. As Feast's own
``serve_offline`` does, the server then serves that file from a new
temporary folder (so paths in it should be absolute, or remote), which
:func:`remove_env_repos` deletes when the server exits.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

ENV_PREFIX = "FLIGHTLAB_"
FEATURE_STORE_YAML_ENV = "FEATURE_STORE_YAML_BASE64"
_NO_ENV_ACTIONS = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
# The folders repo_from_env made in this process, to delete once the server exits.
_ENV_REPOS: list[Path] = []


def env_name(action: argparse.Action) -> str | None:
    """``FLIGHTLAB_<LONG NAME>`` of an option, or None for help, version, positionals."""
    if isinstance(action, _NO_ENV_ACTIONS) or not action.option_strings:
        return None
    longest = max(action.option_strings, key=len)
    return ENV_PREFIX + longest.lstrip("-").replace("-", "_").upper()


def options_with_env(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    """Every option of ``parser`` and of its subcommands, with its variable name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from options_with_env(sub)
            continue
        name = env_name(action)
        if name is not None:
            yield name, action


def apply_env(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Make the variables set in ``environ`` the defaults of their options;
    name each option's variable in its help."""
    for name, action in options_with_env(parser):
        action.help = f"{action.help or ''} [env {name}]".strip()
        if name not in environ:
            continue
        raw = environ[name]
        try:
            value = action.type(raw) if action.type is not None else raw
        except (TypeError, ValueError):
            parser.error(f"{name}={raw!r} is not a valid value for {action.option_strings[-1]}")
        if action.choices is not None and value not in action.choices:
            parser.error(f"{name}={raw!r}: choose from {', '.join(map(str, action.choices))}")
        action.default = value


def repo_from_env(environ: Mapping[str, str]) -> Path | None:
    """The folder holding ``feature_store.yaml`` decoded from
    ``FEATURE_STORE_YAML_BASE64``, or None when it is not set.

    Raises ValueError naming the variable when it is not base64 of a text.
    """
    encoded = environ.get(FEATURE_STORE_YAML_ENV, "").strip()
    if not encoded:
        return None
    try:
        text = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"{FEATURE_STORE_YAML_ENV} is not base64 of a YAML text: {exc}") from None
    repo = Path(tempfile.mkdtemp(prefix="flightlab-repo-"))
    _ENV_REPOS.append(repo)
    (repo / "feature_store.yaml").write_text(text)
    return repo


def remove_env_repos() -> None:
    """Delete the folders :func:`repo_from_env` made (the server has exited).

    Feast may have written next to the file (a registry cache, a local
    database when the config names a relative path): the whole folder goes.
    """
    while _ENV_REPOS:
        shutil.rmtree(_ENV_REPOS.pop(), ignore_errors=True)
