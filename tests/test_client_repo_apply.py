"""`feast plan` and `feast apply` in a client repo whose offline store is remote.

The client repo holds the server repo's definitions (its file sources point
where the server reads the files) but its own registry, and its
feature_store.yaml names ``flightlab.client.RemoteOfflineStore``. The real
``feast`` CLI then checks every batch source through the server
(validate_data_source) and infers entity columns from the server's answer
(get_table_column_names_and_types_from_data_source).
"""

from __future__ import annotations

from typing import Any

import pytest
from feast import FeatureStore
from offline_helpers import ENTITY_KEYS, FEATURES, assert_same_rows, server_stats

from flightlab.testing.processes import run_feast
from flightlab.testing.sample_repo import client_repo_yaml, entity_frame

VALIDATE = "validate_data_source"
COLUMNS = "get_table_column_names_and_types_from_data_source"
BATCH_SOURCES = 2  # driver_stats_source, customer_stats_source


def served(stats: dict[str, Any], api: str) -> int:
    return stats["requests_by_api"].get(api, 0)


@pytest.fixture(scope="module")
def client_runs(server_repo, offline_server, tmp_path_factory) -> dict[str, Any]:
    """A client repo, planned then applied with the real CLI; the server's
    figures before and after each run."""
    repo = tmp_path_factory.mktemp("apply_client").resolve() / "client"
    (repo / "data").mkdir(parents=True)
    definitions = (server_repo / "definitions.py").read_text()
    local_data = 'DATA = Path(__file__).parent / "data"'
    assert local_data in definitions
    server_data = f"DATA = Path({str(server_repo / 'data')!r})"
    (repo / "definitions.py").write_text(definitions.replace(local_data, server_data))
    (repo / "feature_store.yaml").write_text(
        client_repo_yaml("127.0.0.1", offline_server.port, registry="data/registry.db")
    )
    runs: dict[str, Any] = {"repo": repo, "stats": [server_stats(offline_server)]}
    for command in ("plan", "apply"):
        runs[command] = run_feast(repo, command, timeout=180)
        runs["stats"].append(server_stats(offline_server))
    return runs


def test_feast_plan_checks_the_sources_through_the_server(client_runs):
    plan = client_runs["plan"]
    assert plan.returncode == 0, plan.stderr
    for change in (
        "Created entity driver",
        "Created feature view driver_stats",
        "Created feature view customer_stats",
        "Created on demand feature view conv_rate_plus_val",
        "Created feature service driver_activity",
    ):
        assert change in plan.stdout.splitlines()
    before, after = client_runs["stats"][0], client_runs["stats"][1]
    assert served(after, VALIDATE) == served(before, VALIDATE) + BATCH_SOURCES
    assert after["errors_by_api"] == before["errors_by_api"]


def test_feast_apply_registers_the_definitions_checked_by_the_server(client_runs, local_store):
    apply = client_runs["apply"]
    assert apply.returncode == 0, apply.stderr
    before, after = client_runs["stats"][1], client_runs["stats"][2]
    assert served(after, VALIDATE) == served(before, VALIDATE) + BATCH_SOURCES
    # Entity columns are not declared: apply asked the server for the columns.
    assert served(after, COLUMNS) > served(before, COLUMNS)
    assert after["errors_by_api"] == before["errors_by_api"]

    client = FeatureStore(repo_path=str(client_runs["repo"]))
    assert client.config.registry.path == "data/registry.db"  # its own, not the server's

    def names(objects) -> list[str]:
        return sorted(o.name for o in objects)

    assert names(client.list_feature_views()) == names(local_store.list_feature_views())
    assert names(client.list_on_demand_feature_views()) == ["conv_rate_plus_val"]
    assert names(client.list_feature_services()) == ["driver_activity"]
    assert names(client.list_entities()) == names(local_store.list_entities())
    inferred = client.get_feature_view("driver_stats").entity_columns
    assert [column.name for column in inferred] == ["driver_id"]


def test_the_applied_client_repo_reads_what_the_server_repo_reads(client_runs, local_store):
    assert client_runs["apply"].returncode == 0
    client = FeatureStore(repo_path=str(client_runs["repo"]))
    entities = entity_frame(30, seed=61)
    assert_same_rows(
        local_store.get_historical_features(entities, FEATURES).to_df(),
        client.get_historical_features(entities, FEATURES).to_df(),
        ENTITY_KEYS,
    )
