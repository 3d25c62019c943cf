"""A training job leans on the client: one connection for many calls, reads
that ride out a server restart, writes that are never sent twice, and a clear
word when client and server speak protocol versions that do not fit.

The module has its own repo and server (on a port of its own, restarted in
place by the retry tests).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from feast import FeatureStore
from offline_helpers import (
    DRIVER_KEYS,
    ENTITY_KEYS,
    FEATURES,
    assert_same_rows,
    flight_error_detail,
    make_client_store,
    new_driver_rows,
    pull,
)

from flightlab.client import RemoteOfflineStore
from flightlab.client.transport import OfflineFlightClient
from flightlab.server import OfflineServer
from flightlab.testing.processes import free_port
from flightlab.testing.sample_repo import create_sample_repo, entity_frame
from flightlab.wire import protocol, version
from flightlab.wire.flight_errors import ConnectionFailedError, ProtocolVersionError
from flightlab.wire.headers import PROTOCOL_HEADER

RETRY_LOG = "trying again"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return create_sample_repo(tmp_path_factory.mktemp("conn").resolve() / "server", "duckdb")


class Restartable:
    """A server on a fixed port that a test can stop and start again."""

    def __init__(self, repo: Path):
        self.repo = repo
        self.port = free_port()
        self.server = self._start()

    def _start(self) -> OfflineServer:
        return OfflineServer(self.repo, host="127.0.0.1", port=self.port).start()

    def stop(self) -> None:
        self.server.stop()

    def start_later(self, seconds: float) -> threading.Thread:
        def start() -> None:
            threading.Event().wait(seconds)
            self.server = self._start()

        thread = threading.Thread(target=start)
        thread.start()
        return thread


@pytest.fixture(scope="module")
def served(repo) -> Iterator[Restartable]:
    restartable = Restartable(repo)
    yield restartable
    restartable.stop()


@pytest.fixture(scope="module")
def local(repo) -> FeatureStore:
    return FeatureStore(repo_path=str(repo))


@pytest.fixture(scope="module")
def remote(served, repo, tmp_path_factory) -> FeatureStore:
    client_repo = tmp_path_factory.mktemp("conn_client").resolve() / "client"
    make_client_store(client_repo, served.port, repo)
    yaml = client_repo / "feature_store.yaml"
    yaml.write_text(
        yaml.read_text().replace(
            f"  port: {served.port}\n",
            f"  port: {served.port}\n  retries: 5\n  retry_backoff: 0.2\n",
        )
    )
    return FeatureStore(repo_path=str(client_repo))


def test_many_calls_share_one_connection(remote, local, served):
    before = served.server.stats_json()["client_connections"]
    entities = entity_frame(20, seed=5)

    for _ in range(10):
        got = remote.get_historical_features(entities, FEATURES).to_df()
        pull(remote, "pull_all_from_table_or_query").to_df()

    assert_same_rows(local.get_historical_features(entities, FEATURES).to_df(), got, ENTITY_KEYS)
    assert served.server.stats_json()["client_connections"] == before + 1


def test_a_read_rides_out_a_server_restart(remote, local, served, caplog):
    entities = entity_frame(20, seed=6)
    remote.get_historical_features(entities, FEATURES).to_df()  # connected
    served.stop()
    restarted = served.start_later(0.5)

    with caplog.at_level(logging.WARNING, logger="flightlab.client"):
        got = remote.get_historical_features(entities, FEATURES).to_df()
    restarted.join()

    assert_same_rows(local.get_historical_features(entities, FEATURES).to_df(), got, ENTITY_KEYS)
    assert any(RETRY_LOG in r.getMessage() for r in caplog.records)


def test_a_streamed_read_rides_out_a_server_restart_before_its_first_batch(
    remote, local, served, caplog
):
    entities = entity_frame(20, seed=7)
    served.stop()
    restarted = served.start_later(0.5)

    job = remote.get_historical_features(entities, FEATURES)
    with caplog.at_level(logging.WARNING, logger="flightlab.client"):
        got = pa.Table.from_batches(list(job.to_arrow_batches())).to_pandas()
    restarted.join()

    assert any(RETRY_LOG in r.getMessage() for r in caplog.records)

    assert_same_rows(local.get_historical_features(entities, FEATURES).to_df(), got, ENTITY_KEYS)


def test_a_write_is_never_retried(remote, local, served, caplog):
    rows = new_driver_rows(hours_after_end=7, drivers=(1001, 1002))
    rows_before = len(pull(local, "pull_all_from_table_or_query").to_df())
    view = remote.get_feature_view("driver_stats")
    served.stop()
    restarted = served.start_later(0.5)

    with caplog.at_level(logging.WARNING, logger="flightlab.client"):
        with pytest.raises(ConnectionFailedError):
            RemoteOfflineStore.offline_write_batch(
                remote.config, view, pa.Table.from_pandas(rows), progress=None
            )
    restarted.join()

    assert not any(RETRY_LOG in r.getMessage() for r in caplog.records)
    assert len(pull(local, "pull_all_from_table_or_query").to_df()) == rows_before
    # The server is back: the same write now lands once.
    remote.write_to_offline_store("driver_stats", rows)
    assert len(pull(local, "pull_all_from_table_or_query").to_df()) == rows_before + len(rows)
    written = pull(remote, "pull_all_from_table_or_query").to_df()
    assert_same_rows(pull(local, "pull_all_from_table_or_query").to_df(), written, DRIVER_KEYS)


# --- protocol versions -------------------------------------------------------------------


class OlderClient(OfflineFlightClient):
    """A client of a protocol older than the server serves."""

    protocol = version.MIN_CLIENT_PROTOCOL - 1


class NewerClient(OfflineFlightClient):
    """A client that needs a server newer than this one."""

    min_server_protocol = version.PROTOCOL_VERSION + 1


def test_the_client_learns_the_servers_version_on_its_first_call(served):
    with OfflineFlightClient(served.server.location) as client:
        assert client.check_protocol() == version.PROTOCOL_VERSION
        assert client.stats()["staged_commands"] == 0


def test_an_older_client_is_told_to_upgrade_the_client(served):
    with OlderClient(served.server.location) as client:
        with pytest.raises(ProtocolVersionError, match="upgrade flightlab on the client"):
            client.check_protocol()


def test_a_call_from_an_older_client_is_refused_by_the_server(served):
    raw = flight.FlightClient(served.server.location)
    old = str(version.MIN_CLIENT_PROTOCOL - 1).encode()
    options = flight.FlightCallOptions(headers=[(PROTOCOL_HEADER.encode(), old)])
    try:
        with pytest.raises(flight.FlightError) as refused:
            list(raw.do_action(flight.Action("stats", b""), options))
    finally:
        raw.close()
    detail = flight_error_detail(refused.value)
    assert detail["class"] == "ProtocolVersionError"
    assert "upgrade flightlab on the client" in detail["message"]


def test_a_newer_client_is_told_to_upgrade_the_server(served):
    request = protocol.GetHistoricalFeatures(
        features=tuple(FEATURES), entity_df=pa.Table.from_pandas(entity_frame(5))
    )
    with NewerClient(served.server.location) as client:
        with pytest.raises(ProtocolVersionError, match="upgrade flightlab on the server"):
            client.fetch(request)
    assert served.server.stats_json()["staged_commands"] == 0  # nothing was sent
