"""The deployment story: configuration from the environment, and ``deploy/``.

No container runtime or cluster is reachable here, so the files are checked
against the server itself: the manifests parse, and their ports, probes,
variable names and arguments are the server's options; the image's entry
command runs as a subprocess with nothing but the image's environment and
``FEATURE_STORE_YAML_BASE64``, in an empty folder; so does the command Feast's
Helm chart runs, through the image's ``feast`` entry point.
"""

from __future__ import annotations

import base64
import importlib
import itertools
import json
import os
import shlex
import signal
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from offline_helpers import ENTITY_KEYS, FEATURES, assert_same_rows, run_flightlab
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from paths import DEPLOY
from service_helpers import (
    base64_feature_store_yaml,
    health_status,
    server_process,
)

from flightlab.cli import build_parser
from flightlab.cli_env import FEATURE_STORE_YAML_ENV, options_with_env
from flightlab.client.transport import OfflineFlightClient
from flightlab.feast_entry import flightlab_argv
from flightlab.testing.sample_repo import entity_frame
from flightlab.wire import protocol

VENV_BIN = str(Path(sys.executable).parent)
# Variables the manifests may set besides the server's own.
OTHER_ENV = {FEATURE_STORE_YAML_ENV, "POD_IP"}
# Kubernetes' terminationGracePeriodSeconds when a pod sets none (Feast's chart sets none).
KUBERNETES_DEFAULT_GRACE_SECONDS = 30
# After the drain, stopping takes a few seconds more (the Flight server, the
# health and metrics ports, the worker pool): the grace period must cover both.
STOP_SECONDS = 5


def server_env_names() -> set[str]:
    return {name for name, _ in options_with_env(build_parser())}


def dockerfile_lines() -> list[str]:
    """The Dockerfile's instructions, one a line (continuations joined)."""
    return (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ").splitlines()


def dockerfile() -> tuple[dict[str, str], list[str]]:
    """The image's ENV (the FLIGHTLAB_* ones) and its CMD."""
    env: dict[str, str] = {}
    cmd: list[str] = []
    for line in dockerfile_lines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                name, _, value = pair.partition("=")
                env[name] = value
        elif line.startswith("CMD "):
            cmd = json.loads(line[4:])
    return {k: v for k, v in env.items() if k.startswith("FLIGHTLAB_")}, cmd


def manifests() -> dict[str, dict]:
    docs = yaml.safe_load_all((DEPLOY / "kubernetes" / "flightlab.yaml").read_text())
    return {doc["kind"]: doc for doc in docs}


def helm_values() -> dict:
    return yaml.safe_load((DEPLOY / "helm" / "values-flightlab.yaml").read_text())


def example_configs() -> dict[str, dict]:
    """The feature_store.yaml files the deployment examples carry, parsed."""
    encoded = {
        "the Kubernetes Secret": manifests()["Secret"]["stringData"][FEATURE_STORE_YAML_ENV],
        "the Helm values": helm_values()["feature_store_yaml_base64"],
    }
    return {
        where: yaml.safe_load(base64.b64decode(text)) for where, text in encoded.items() if text
    }


# --- configuration from the environment ---------------------------------------------


def test_every_option_has_its_environment_variable_and_a_flag_still_wins():
    names = server_env_names()
    expected = {"FLIGHTLAB_CHDIR", "FLIGHTLAB_HOST", "FLIGHTLAB_PORT", "FLIGHTLAB_CERT"}
    expected |= {"FLIGHTLAB_MAX_STAGED_BYTES", "FLIGHTLAB_HEALTH_PORT", "FLIGHTLAB_DRAIN_SECONDS"}
    expected |= {"FLIGHTLAB_ADVERTISE_LOCATION", "FLIGHTLAB_METRICS_PORT", "FLIGHTLAB_LOG_LEVEL"}
    assert expected <= names
    environ = {"FLIGHTLAB_PORT": "9100", "FLIGHTLAB_WORKERS": "7", "FLIGHTLAB_LOG_LEVEL": "debug"}
    environ["FLIGHTLAB_CHDIR"] = "/srv/repo"
    args = build_parser(environ).parse_args(["serve_offline", "--workers", "2"])
    assert (args.port, args.workers, args.log_level, args.chdir) == (9100, 2, "debug", "/srv/repo")
    assert build_parser(environ).parse_args(["serve_offline"]).workers == 7


@pytest.mark.parametrize(
    ("name", "value"), [("FLIGHTLAB_PORT", "eighty"), ("FLIGHTLAB_LOG_LEVEL", "loud")]
)
def test_a_bad_environment_value_fails_naming_the_variable(name, value, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser({name: value}).parse_args(["serve_offline"])
    assert exited.value.code == 2
    assert name in capsys.readouterr().err


def test_a_feature_store_yaml_that_is_not_base64_fails_with_a_message(tmp_path):
    env = {**os.environ, FEATURE_STORE_YAML_ENV: "not base64 at all!"}
    run = run_flightlab("serve_offline", "-p", "0", cwd=tmp_path, env=env)
    assert run.returncode == 2
    assert FEATURE_STORE_YAML_ENV in run.stderr and run.stdout == ""


# --- the image ---------------------------------------------------------------------


def _image_env(server_repo: Path) -> dict[str, str]:
    """The image's environment on loopback with free ports, plus the repo's config."""
    image_env, _ = dockerfile()
    return {
        **image_env,
        "FLIGHTLAB_HOST": "127.0.0.1",
        "FLIGHTLAB_PORT": "0",
        "FLIGHTLAB_HEALTH_PORT": "0",
        "FLIGHTLAB_METRICS_PORT": "0",
        "PATH": VENV_BIN + os.pathsep + os.environ["PATH"],
        FEATURE_STORE_YAML_ENV: base64_feature_store_yaml(server_repo),
    }


def _assert_serves_the_local_answer(location: str, local_store, rows: int, seed: int) -> None:
    entities = entity_frame(rows, seed=seed)
    with OfflineFlightClient(location, timeout=60) as client:
        got = client.fetch(
            protocol.GetHistoricalFeatures(
                features=tuple(FEATURES), entity_df=pa.Table.from_pandas(entities)
            )
        )
    expected = local_store.get_historical_features(entities, FEATURES).to_df()
    assert_same_rows(expected, got.to_pandas(), ENTITY_KEYS)


def _wait_serving(health_port: int) -> None:
    deadline = time.monotonic() + 60
    while health_status(health_port) != "SERVING":
        assert time.monotonic() < deadline, "never SERVING"
        time.sleep(0.2)


def test_the_image_command_serves_from_feature_store_yaml_base64_alone(
    server_repo, local_store, tmp_path
):
    image_env, cmd = dockerfile()
    assert cmd == ["flightlab", "serve_offline"]
    assert image_env["FLIGHTLAB_HOST"] == "0.0.0.0" and image_env["FLIGHTLAB_PORT"] == "8815"
    assert set(image_env) <= server_env_names()
    empty = tmp_path / "workdir"  # the image's WORKDIR: no feature_store.yaml in it
    empty.mkdir()
    command = [str(Path(VENV_BIN) / cmd[0]), *cmd[1:]]
    temp = tmp_path / "temp"  # the server's TMPDIR, where the decoded repo goes
    temp.mkdir()
    env = {**_image_env(server_repo), "TMPDIR": str(temp)}
    with server_process(command, tmp_path, env, empty, ("health", "metrics")) as server:
        _wait_serving(server.side_ports["health"])
        [decoded] = _decoded_repos(temp)
        assert (decoded / "feature_store.yaml").is_file()
        _assert_serves_the_local_answer(server.location, local_store, 15, seed=81)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
    assert list(empty.iterdir()) == []
    assert _decoded_repos(temp) == []  # removed when the server exited


def _decoded_repos(temp: Path) -> list[Path]:
    return sorted(temp.glob("flightlab-repo-*"))


def test_the_decoded_repo_is_removed_when_the_server_fails_to_start(tmp_path):
    # A config Feast refuses: the server exits with an error, and leaves nothing.
    bad_yaml = (
        "project: p\nprovider: local\nregistry: r.db\noffline_store:\n  type: no_such_store\n"
    )
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path),
        FEATURE_STORE_YAML_ENV: base64.b64encode(bad_yaml.encode()).decode(),
    }
    run = run_flightlab("serve_offline", "-p", "0", cwd=tmp_path, env=env)
    assert run.returncode != 0 and "flightlab serving" not in run.stdout
    assert "no_such_store" in run.stderr, run.stderr[-2000:]
    assert _decoded_repos(tmp_path) == []


def test_feasts_chart_command_starts_flightlab_through_the_image_feast_entry_point(
    server_repo, local_store, tmp_path
):
    # What feast-feature-server's deployment runs in feast_mode: offline.
    chart_command = ["--log-level", "INFO", "serve_offline", "-h", "127.0.0.1"]
    assert flightlab_argv(["--log-level", "INFO", "serve_offline", "-h", "0.0.0.0"]) == [
        "serve_offline",
        "-h",
        "0.0.0.0",
        "--log-level",
        "info",
    ]
    assert flightlab_argv(["apply"]) is None  # other commands: Feast's own CLI
    command = [str(DEPLOY / "feast"), *chart_command]
    env = _image_env(server_repo)
    with server_process(command, tmp_path, env, tmp_path, ("health", "metrics")) as server:
        _assert_serves_the_local_answer(server.location, local_store, 9, seed=82)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
    assert "get_historical_features command=" in server.log()


# --- the manifests -----------------------------------------------------------------


def test_the_kubernetes_manifests_match_the_servers_options():
    docs = manifests()
    assert set(docs) == {"Secret", "Deployment", "Service"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert set(env) <= server_env_names() | OTHER_ENV
    assert (
        env[FEATURE_STORE_YAML_ENV]["valueFrom"]["secretKeyRef"]["name"]
        == (docs["Secret"]["metadata"]["name"])
    )
    values = {name: e["value"] for name, e in env.items() if "value" in e}
    # The arguments parse, with the manifest's variables, into the ports probed.
    args = build_parser(values).parse_args(container["args"][1:])
    assert container["args"][0] == "flightlab"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"flight": args.port, "health": args.health_port, "metrics": args.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == args.health_port, probe
    assert args.advertise_location == "grpc+tcp://$(POD_IP):8815"
    # SIGTERM comes after the preStop pause; the drain and the stop after it
    # must end before the grace period does, or SIGKILL cuts the drain.
    pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= float(pause[1]) + args.drain_seconds + STOP_SECONDS
    assert pod["securityContext"]["runAsNonRoot"] is True
    service_ports = {p["name"]: p["targetPort"] for p in docs["Service"]["spec"]["ports"]}
    assert set(service_ports.values()) <= set(ports)
    annotations = docs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == args.metrics_port

    secret_yaml = base64.b64decode(docs["Secret"]["stringData"][FEATURE_STORE_YAML_ENV])
    config = yaml.safe_load(secret_yaml)
    assert {"project", "registry", "offline_store"} <= set(config)
    assert config["offline_store"]["type"] != "remote"  # the server's own store


def test_the_helm_values_run_the_flightlab_image_in_feasts_offline_mode():
    values = helm_values()
    assert values["feast_mode"] == "offline"
    assert "flightlab" in values["image"]["repository"]
    env = {e["name"]: e.get("value") for e in values["extraEnvs"]}
    assert set(env) <= server_env_names() | OTHER_ENV
    # The chart's fixed command, through the image's feast entry point, with
    # the image's variables and the values' on top.
    image_env, _ = dockerfile()
    pod_env = {**image_env, **{k: v for k, v in env.items() if v}}
    chart = ["--log-level", values["logLevel"], "serve_offline", "-h", "0.0.0.0"]
    args = build_parser(pod_env).parse_args(flightlab_argv(chart))
    assert (args.host, args.port, args.log_level) == ("0.0.0.0", 8815, "info")
    assert (args.health_port, args.metrics_port) == (8816, 9090)
    # Feast's chart renders no terminationGracePeriodSeconds (a value of that
    # name would be ignored) and no preStop: SIGKILL comes Kubernetes' default
    # grace period after SIGTERM, and the drain and the stop must end before.
    assert "terminationGracePeriodSeconds" not in values
    assert args.drain_seconds + STOP_SECONDS <= KUBERNETES_DEFAULT_GRACE_SECONDS
    # So does the image's own default, for values that leave the drain out.
    image_default = build_parser(image_env).parse_args(["serve_offline"]).drain_seconds
    assert image_default + STOP_SECONDS <= KUBERNETES_DEFAULT_GRACE_SECONDS


# --- the image's Python packages -----------------------------------------------------


def image_requirements() -> list[str]:
    """What the Dockerfile's ``pip install`` asks for; ``.`` (and ``.[extras]``)
    read from pyproject.toml."""
    [line] = [ln for ln in dockerfile_lines() if ln.startswith("RUN ") and "pip install" in ln]
    words = shlex.split(line[4:])
    arguments = itertools.takewhile(lambda w: w != "&&", words[words.index("install") + 1 :])
    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]
    requirements: list[str] = []
    for argument in arguments:
        assert not argument.startswith("-"), f"a pip option this test cannot read: {argument}"
        if argument == "." or argument.startswith(".["):
            extras = argument[2:-1].split(",") if argument != "." else []
            requirements += project["dependencies"]
            requirements += [r for extra in extras for r in project["optional-dependencies"][extra]]
        else:
            requirements.append(argument)
    return requirements


def _in_extra(requirement: Requirement, extra: str) -> bool:
    marker = requirement.marker
    return (
        marker is not None
        and marker.evaluate({"extra": extra})
        and not marker.evaluate({"extra": ""})
    )


def installed_distributions(requirements: list[str]) -> set[str]:
    """The distributions pip installs for ``requirements``: their dependencies,
    extras included, walked through the metadata of the packages installed
    here (the versions the image gets too)."""
    names: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(text) for text in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        names.add(name)
        try:
            dependencies = [Requirement(text) for text in metadata.requires(name) or []]
        except metadata.PackageNotFoundError:
            continue  # not installed here: its own dependencies stay unknown
        for dependency in dependencies:
            marker = dependency.marker
            if marker is None or marker.evaluate({"extra": ""}):
                todo.append(dependency)
            elif any(_in_extra(dependency, extra) for extra in requirement.extras):
                todo.append(dependency)
    return names


def needed_distributions(config: dict) -> dict[str, set[str]]:
    """Each driver and store ``config`` names, with the distributions it needs
    (imported here on the way: the name must be real)."""
    from feast.repo_config import OFFLINE_STORE_CLASS_FOR_TYPE, ONLINE_STORE_CLASS_FOR_TYPE
    from sqlalchemy.engine import make_url

    needs: dict[str, set[str]] = {}
    registry = config.get("registry")
    if isinstance(registry, dict) and registry.get("registry_type") == "sql":
        url = make_url(registry["path"])
        driver = url.get_dialect().import_dbapi().__name__.split(".")[0]
        providers = set(map(canonicalize_name, metadata.packages_distributions()[driver]))
        needs[f"the SQL registry's driver {url.drivername}"] = providers
    feast_requirements = [Requirement(text) for text in metadata.requires("feast") or []]
    stores = {"offline_store": OFFLINE_STORE_CLASS_FOR_TYPE}
    stores["online_store"] = ONLINE_STORE_CLASS_FOR_TYPE
    for kind, classes in stores.items():
        store_type = (config.get(kind) or {}).get("type")
        if store_type is None:
            continue
        module, _, name = classes.get(store_type, store_type).rpartition(".")
        getattr(importlib.import_module(module), name)
        # Feast's extra of the same name brings a store's drivers (duckdb, postgres...).
        extra = store_type.split(".")[0]
        needed = {canonicalize_name(r.name) for r in feast_requirements if _in_extra(r, extra)}
        needs[f"the {kind} {store_type!r} (feast[{extra}])"] = needed
    return needs


def test_the_image_installs_the_drivers_and_stores_the_example_configs_name():
    installed = installed_distributions(image_requirements())
    assert {"feast", "pyarrow", "duckdb"} <= installed
    configs = example_configs()
    assert "the Kubernetes Secret" in configs
    for where, config in configs.items():
        needs = needed_distributions(config)
        assert needs, f"{where} names no driver or store"
        for what, needed in needs.items():
            missing = needed - installed
            assert not missing, f"{where} names {what}: the image installs no {sorted(missing)}"
    # The Secret's registry is postgresql+psycopg: psycopg (3), not psycopg2.
    assert "psycopg" in installed
    # And nothing the examples do not need: no Spark (300+ MB, and a Java runtime).
    assert "pyspark" not in installed
