"""A client repo's ``auth`` config: its token goes with every call.

flightlab's client and Feast's stock client, configured as users configure
them (``auth: {type: oidc, token: ...}``), read with a reader's token, are
denied with a writer's (naming the view and the action, as Flight's
unauthorized class), and are not authenticated without a token or with an
expired one. ``FeatureStore.write_to_offline_store`` needs both permissions
it uses: READ_OFFLINE on the source, then WRITE_OFFLINE on the view.
"""

from __future__ import annotations

import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
from feast.errors import FeastPermissionError
from feast.infra.offline_stores.remote import RemoteOfflineStore as FeastRemoteOfflineStore
from feast.permissions.auth_model import NoAuthConfig, OidcClientAuthConfig
from security_helpers import (
    FEATURES,
    assert_clean_and_serving,
    assert_unauthenticated,
    client_repo,
    feast_store,
    flightlab_store,
    new_driver_rows,
    no_traceback,
    same_rows,
)

from flightlab.client import RemoteOfflineStore
from flightlab.errors import AuthenticationFailedError
from flightlab.testing.sample_repo import entity_frame


@pytest.mark.parametrize("client_kind", ["flightlab", "feast"])
def test_a_client_repo_sends_the_token_of_its_auth_config(
    client_kind, server, repo, local, tokens, tmp_path
):
    store_config = (flightlab_store if client_kind == "flightlab" else feast_store)(server)
    registry = repo / "data" / "registry.db"
    entities = entity_frame(20, seed=4, with_request_data=False)
    expected = local.get_historical_features(entities, FEATURES).to_df()

    reader = client_repo(
        tmp_path / "reader", registry, store_config, {"type": "oidc", "token": tokens["rita"]}
    )
    # Feast routes `{type: oidc, token}` to its client-side config.
    assert isinstance(reader.config.auth_config, OidcClientAuthConfig)
    assert reader.config.auth_config.token == tokens["rita"]
    offline_store = reader._get_provider().offline_store
    expected_class = RemoteOfflineStore if client_kind == "flightlab" else FeastRemoteOfflineStore
    assert isinstance(offline_store, expected_class)
    same_rows(expected, reader.get_historical_features(entities, FEATURES).to_df())

    # A writer's token: authenticated, but denied the read, naming view and action.
    writer = client_repo(
        tmp_path / "writer", registry, store_config, {"type": "oidc", "token": tokens["walt"]}
    )
    with pytest.raises(FeastPermissionError) as denied:
        writer.get_historical_features(entities, FEATURES).to_df()
    assert "READ_OFFLINE" in str(denied.value) and "FeatureView:" in str(denied.value)
    # ... and Flight's class for a refusal, whichever client re-created it.
    assert isinstance(denied.value, flight.FlightUnauthorizedError), repr(denied.value)
    no_traceback(denied.value)

    # Without an auth config, or with an expired token: not authenticated.
    anonymous = client_repo(tmp_path / "anonymous", registry, store_config)
    assert isinstance(anonymous.config.auth_config, NoAuthConfig)
    expired = client_repo(
        tmp_path / "expired",
        registry,
        store_config,
        {"type": "oidc", "token": tokens["expired_token"]},
    )
    # The server refuses at call start, before it reads any upload. Feast's
    # client maps errors of its exchange call but not of the writer it then
    # uses, so depending on which step meets the refusal first, it raises
    # flightlab's class re-created from the detail, or the Flight error itself.
    expected = (
        AuthenticationFailedError
        if client_kind == "flightlab"
        else (AuthenticationFailedError, flight.FlightUnauthenticatedError)
    )
    for store, reason in ((anonymous, "no credentials"), (expired, "expired")):
        with pytest.raises(expected) as refused:
            store.get_historical_features(entities, FEATURES).to_df()
        unauthenticated = refused.value
        assert reason in str(unauthenticated)
        no_traceback(unauthenticated)
        if isinstance(unauthenticated, AuthenticationFailedError):
            cause = unauthenticated.__cause__ or unauthenticated.__context__
            assert isinstance(cause, flight.FlightUnauthenticatedError)
        if client_kind == "flightlab":
            assert_unauthenticated(unauthenticated)
    assert_clean_and_serving(server, tokens)


def test_a_client_repo_writes_with_its_token(server, repo, tokens, tmp_path):
    """FeatureStore.write_to_offline_store first reads the source's columns
    (READ_OFFLINE on the data source), then writes (WRITE_OFFLINE on the view)."""
    registry = repo / "data" / "registry.db"
    rows = new_driver_rows(5000, drivers=(1003,))
    data_file = repo / "data" / "driver_stats.parquet"
    before = pq.read_metadata(data_file).num_rows
    denied_at = {
        "rita": ("WRITE_OFFLINE", "FeatureView:driver_stats"),
        "walt": ("READ_OFFLINE", "FileSource:driver_stats_source"),
    }
    for user in ("rita", "walt", "ada"):
        store = client_repo(
            tmp_path / user,
            registry,
            flightlab_store(server),
            {"type": "oidc", "token": tokens[user]},
        )
        if user in denied_at:
            with pytest.raises(FeastPermissionError) as denied:
                store.write_to_offline_store("driver_stats", rows)
            action, resource = denied_at[user]
            assert action in str(denied.value) and resource in str(denied.value)
            no_traceback(denied.value)
            assert pq.read_metadata(data_file).num_rows == before
        else:
            store.write_to_offline_store("driver_stats", rows)
            assert pq.read_metadata(data_file).num_rows == before + 1
    assert_clean_and_serving(server, tokens)
