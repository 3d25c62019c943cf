"""Two replicas behind a round-robin TCP load balancer give the local answer.

Two real ``flightlab serve_offline`` processes serve one repo (shared files,
as replicas share a registry and storage); a TCP proxy in front sends each new
connection to the next replica, as a Kubernetes Service does. Each replica
advertises its own address, so a staged command's result is fetched from the
replica that holds it. Every API through the proxy, by flightlab's client and
by Feast's stock client, equals the local call. A command staged on one
replica and run on the other, or whose puts were split, fails clearly.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from feast import FeatureStore
from feast.infra.offline_stores.file_source import SavedDatasetFileStorage
from offline_helpers import (
    DRIVER_KEYS,
    ENTITY_KEYS,
    FEATURES,
    assert_same_rows,
    logged_rows,
    make_client_store,
    new_driver_rows,
    offline_store_of,
    pull,
    server_stats,
)
from service_helpers import RoundRobinProxy, server_process

from flightlab.client import connections
from flightlab.client.transport import OfflineFlightClient
from flightlab.errors import UnknownCommandError
from flightlab.testing.processes import ServerProcess, free_port
from flightlab.testing.sample_repo import DAYS, START, create_sample_repo, entity_frame
from flightlab.wire import protocol
from flightlab.wire.actions import ACTION_DROP
from flightlab.wire.manifest import params_metadata


@dataclass
class Replicas:
    repo: Path
    servers: list[ServerProcess]
    proxy: RoundRobinProxy


@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> Iterator[Replicas]:
    base = tmp_path_factory.mktemp("replicas").resolve()
    repo = create_sample_repo(base / "server", "duckdb")
    ports = [free_port(), free_port()]
    with server_process(_replica_command(repo, ports[0]), base) as a:
        with server_process(_replica_command(repo, ports[1]), base) as b:
            with RoundRobinProxy([a.port, b.port]) as proxy:
                yield Replicas(repo, [a, b], proxy)


def _replica_command(repo: Path, port: int) -> list[str]:
    """A replica on ``port`` that names itself as where its results are fetched."""
    command = [sys.executable, "-m", "flightlab", "-c", str(repo), "serve_offline"]
    return [*command, "-p", str(port), "--advertise-location", f"grpc+tcp://127.0.0.1:{port}"]


def _stock_client(path: Path, port: int, repo: Path) -> FeatureStore:
    """A client repo with Feast's own ``type: remote`` offline store."""
    make_client_store(path, port, repo)
    yaml = (path / "feature_store.yaml").read_text()
    (path / "feature_store.yaml").write_text(
        yaml.replace("type: flightlab.client.RemoteOfflineStore", "type: remote")
    )
    return FeatureStore(repo_path=str(path))


def _reads_match(remote: FeatureStore, local: FeatureStore, seed: int) -> None:
    entities = entity_frame(25, seed=seed)
    assert_same_rows(
        local.get_historical_features(entities, FEATURES).to_df(),
        remote.get_historical_features(entities, FEATURES).to_df(),
        ENTITY_KEYS,
    )
    for api in ("pull_latest_from_table_or_query", "pull_all_from_table_or_query"):
        window = {"start_date": START, "end_date": START + timedelta(days=DAYS)}
        assert_same_rows(
            pull(local, api, **window).to_df(), pull(remote, api, **window).to_df(), DRIVER_KEYS
        )
    source = local.get_data_source("driver_stats_source")
    columns = "get_table_column_names_and_types_from_data_source"
    assert list(getattr(offline_store_of(remote), columns)(remote.config, source)) == list(
        getattr(offline_store_of(local), columns)(local.config, source)
    )
    offline_store_of(remote).validate_data_source(remote.config, source)


def _writes_land(
    remote: FeatureStore, local: FeatureStore, hours: int, tmp: Path, persist: bool = True
) -> None:
    drivers = (2001 + hours, 2101 + hours)
    rows = new_driver_rows(hours, drivers)
    before = len(pull(local, "pull_all_from_table_or_query").to_df())
    remote.write_to_offline_store("driver_stats", rows)
    assert len(pull(local, "pull_all_from_table_or_query").to_df()) == before + len(drivers)

    logs_dir = local.get_feature_service("driver_activity").logging_config.destination.path
    logs_before = set(Path(logs_dir).rglob("*.parquet")) if Path(logs_dir).exists() else set()
    remote.write_logged_features(logged_rows(local), remote.get_feature_service("driver_activity"))
    assert set(Path(logs_dir).rglob("*.parquet")) - logs_before
    if not persist:
        return
    entities = entity_frame(12, seed=hours, with_request_data=False)
    features = ["driver_stats:conv_rate", "customer_stats:avg_rating"]
    name = f"through_the_proxy_{hours}"
    remote.create_saved_dataset(
        from_=remote.get_historical_features(entities, features),
        name=name,
        storage=SavedDatasetFileStorage(path=str(tmp / f"{name}.parquet")),
    )
    expected = local.get_historical_features(entities, features).to_df()
    assert_same_rows(expected, local.get_saved_dataset(name).to_df(), ENTITY_KEYS)


def _served_by_each(replicas: Replicas) -> list[int]:
    return [sum(server_stats(s)["requests_by_api"].values()) for s in replicas.servers]


def test_every_api_through_the_balancer_with_flightlabs_client_is_the_local_answer(
    replicas, tmp_path
):
    local = FeatureStore(repo_path=str(replicas.repo))
    connections_before = dict(replicas.proxy.connections_to)
    remote = make_client_store(tmp_path / "client", replicas.proxy.port, replicas.repo)
    for seed in (1, 2):
        # A process keeps one connection per server, and a TCP balancer picks a
        # replica per connection: a new one each time stands for another process.
        connections.close_all()
        _reads_match(remote, local, seed)
    _writes_land(remote, local, hours=3, tmp=tmp_path)
    opened = {k: v - connections_before[k] for k, v in replicas.proxy.connections_to.items()}
    assert all(count > 0 for count in opened.values()), opened
    assert all(count > 0 for count in _served_by_each(replicas))
    for server in replicas.servers:
        assert server_stats(server)["staged_commands"] == 0
        assert "Traceback" not in server.log()


def test_every_api_through_the_balancer_with_feasts_stock_client_is_the_local_answer(
    replicas, tmp_path
):
    local = FeatureStore(repo_path=str(replicas.repo))
    remote = _stock_client(tmp_path / "stock", replicas.proxy.port, replicas.repo)
    _reads_match(remote, local, seed=3)
    # Feast's client persists only to a registered data source (docs/protocol.md),
    # which the sample repo does not have: its persist is covered by test_feast_compat.
    _writes_land(remote, local, hours=6, tmp=tmp_path, persist=False)
    assert "Traceback" not in "".join(s.log() for s in replicas.servers)


def test_the_result_is_fetched_from_the_replica_that_holds_the_command(replicas):
    request = protocol.GetHistoricalFeatures(
        features=tuple(FEATURES), entity_df=pa.Table.from_pandas(entity_frame(5, seed=8))
    )
    by_location = {s.location: s for s in replicas.servers}
    proxied = f"grpc+tcp://127.0.0.1:{replicas.proxy.port}"
    with OfflineFlightClient(proxied, timeout=60) as client:
        options = client._options(None)  # the client's own headers, as its calls send them
        command_id = client.stage(request, options)
        info = client._client.get_flight_info(protocol.command_descriptor(command_id), options)
        [endpoint] = info.endpoints
        [advertised] = [loc.uri.decode() for loc in endpoint.locations]
        holder = by_location[advertised]  # a replica's own address, not the balancer's
        assert len(by_location) == 2 and advertised != proxied
        staged_there = server_stats(holder)["staged_commands"]
        assert staged_there == 1
        replica = client._client_for(endpoint)
        assert replica is not client._client
        got = replica.do_get(endpoint.ticket, options).read_all()
        assert server_stats(holder)["staged_commands"] == 0
    expected = FeatureStore(repo_path=str(replicas.repo)).get_historical_features(
        entity_frame(5, seed=8), FEATURES
    )
    assert_same_rows(expected.to_df(), got.to_pandas(), ENTITY_KEYS)


def test_a_command_staged_on_one_replica_is_unknown_on_the_other(replicas):
    a, b = (OfflineFlightClient(s.location, timeout=60) for s in replicas.servers)
    request = protocol.GetHistoricalFeatures(
        features=tuple(FEATURES), entity_df=pa.Table.from_pandas(entity_frame(4, seed=9))
    )
    with a, b:
        command_id = a.stage(request)
        with pytest.raises(flight.FlightServerError, match="no staged command"):
            b._client.get_flight_info(protocol.command_descriptor(command_id))
        assert a.fetch(request).num_rows == 4  # and the replica holding it still serves
        drop = flight.Action(ACTION_DROP, protocol.ticket_bytes(command_id))
        list(a._client.do_action(drop, a._options(None)))


def test_a_command_whose_puts_were_split_over_the_replicas_fails_clearly(replicas):
    request = protocol.GetHistoricalFeatures(
        features=tuple(FEATURES), entity_df=pa.Table.from_pandas(entity_frame(4, seed=10))
    )
    params = protocol.encode_request(request)
    command_id = protocol.new_command_id()
    descriptor = protocol.command_descriptor(command_id)
    clients = [flight.FlightClient(s.location) for s in replicas.servers]
    try:
        # As a per-request balancer would: each put to the next replica.
        for i, (name, table) in enumerate(params.items()):
            metadata = {
                **(table.schema.metadata or {}),
                **protocol.put_metadata(command_id, request.api, name),
                **params_metadata(params),
            }
            table = table.replace_schema_metadata(metadata)
            writer, _ = clients[i % 2].do_put(descriptor, table.schema)
            writer.write_table(table)
            writer.close()
        for client in clients:
            with pytest.raises(flight.FlightServerError, match="incomplete on this server") as e:
                client.get_flight_info(descriptor)
            assert "different servers" in str(e.value)
            assert UnknownCommandError.__name__ in e.value.extra_info.decode()
    finally:
        for client in clients:
            client.close()
    for server in replicas.servers:  # a refused command leaves nothing behind
        assert server_stats(server)["staged_commands"] == 0
