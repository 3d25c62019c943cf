"""Who calls: every RPC needs valid credentials, and each auth type its authenticator.

On the OIDC server, each Flight RPC (``list_actions`` and ``list_flights``
included) refuses a caller with no token, an expired one or a forged one,
as ``FlightUnauthenticatedError`` saying why, before any handler runs: nothing
is served, counted or touched. A valid token is enough to list the actions,
whatever its permissions. ``no_auth`` and ``oidc`` build their authenticators;
``kubernetes`` auth, which needs a cluster, fails with one clear line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pyarrow.flight as flight
import pytest
from feast.permissions.auth_model import KubernetesAuthConfig, NoAuthConfig, OidcAuthConfig
from offline_helpers import arrow
from security_helpers import (
    CALL_TIMEOUT,
    _raw_put,
    assert_clean_and_serving,
    client,
    listed,
    no_traceback,
    options,
    raw_client,
)

from flightlab.server import OfflineServer
from flightlab.server.auth import (
    AuthConfigError,
    Authenticator,
    TokenAuthenticator,
    authenticator_for,
)
from flightlab.testing.sample_repo import entity_frame
from flightlab.wire import protocol
from flightlab.wire.actions import ACTION_DROP, ACTION_STATS
from flightlab.wire.headers import AUTHORIZATION_HEADER

# --- authentication of every call --------------------------------------------------------


def _stage_for(server: OfflineServer, token: str) -> str:
    """A command staged by the holder of ``token``: the target of the raw calls."""
    with client(server, token) as c:
        return c.stage(
            protocol.GetHistoricalFeatures(
                features=("driver_stats:conv_rate",),
                entity_df=arrow(entity_frame(3, with_request_data=False)),
            )
        )


RAW_CALLS: dict[str, Callable[[flight.FlightClient, str], Any]] = {
    "list_actions": lambda c, cid: list(c.list_actions(options())),
    "list_flights": lambda c, cid: list(c.list_flights(b"", options())),
    "get_flight_info": lambda c, cid: c.get_flight_info(
        protocol.command_descriptor(cid), options()
    ),
    "do_get": lambda c, cid: c.do_get(
        flight.Ticket(protocol.ticket_bytes(cid)), options()
    ).read_all(),
    "do_action_stats": lambda c, cid: list(c.do_action(flight.Action(ACTION_STATS, b""))),
    "do_action_drop": lambda c, cid: list(
        c.do_action(flight.Action(ACTION_DROP, protocol.ticket_bytes(cid)), options())
    ),
    "do_action_run": lambda c, cid: list(
        c.do_action(flight.Action("validate_data_source", protocol.ticket_bytes(cid)), options())
    ),
    "do_put": lambda c, cid: _raw_put(c, cid),
    "do_exchange": lambda c, cid: _raw_exchange(c),
}


def _raw_exchange(c: flight.FlightClient) -> None:
    command = json.dumps({"api": "pull_all_from_table_or_query", "data_source_name": "x"})
    writer, reader = c.do_exchange(flight.FlightDescriptor.for_command(command), options())
    writer.done_writing()
    reader.read_all()


@pytest.mark.parametrize("credentials", ["no_token", "expired_token", "wrong_signature"])
@pytest.mark.parametrize("rpc", list(RAW_CALLS))
def test_every_rpc_refuses_a_caller_without_valid_credentials(rpc, credentials, server, tokens):
    staged = _stage_for(server, tokens["rita"])
    stats_before = server.stats_json()
    token = None if credentials == "no_token" else tokens[credentials]
    with pytest.raises(flight.FlightUnauthenticatedError) as refused:
        RAW_CALLS[rpc](raw_client(server, token), staged)
    no_traceback(refused.value)
    # Refused before any handler ran: nothing served, counted or touched.
    stats_after = server.stats_json()
    assert stats_after["requests_by_api"] == stats_before["requests_by_api"]
    assert stats_after["staged_commands"] == stats_before["staged_commands"] == 1
    # The owner's command is intact: rita still reads it.
    rita = raw_client(server, tokens["rita"])
    assert listed(rita) == [staged]
    assert (
        rita.do_get(flight.Ticket(protocol.ticket_bytes(staged)), options()).read_all().num_rows
        == 3
    )
    assert_clean_and_serving(server, tokens)


@pytest.mark.parametrize(
    "header, reason",
    [
        (None, "no credentials"),
        ("Basic YWxpY2U6c2VjcmV0", "not 'Bearer <token>'"),
        ("Bearer ", "not 'Bearer <token>'"),
        ("Bearer not-a-jwt", "invalid oidc token"),
        ("expired_token", "expired"),
        ("wrong_signature", "invalid oidc token"),
    ],
)
def test_unauthenticated_errors_say_why(header, reason, server, tokens):
    headers = []
    if header is not None:
        value = f"Bearer {tokens[header]}" if header in tokens else header
        headers = [(AUTHORIZATION_HEADER.encode(), value.encode())]
    call_options = flight.FlightCallOptions(timeout=CALL_TIMEOUT, headers=headers)
    with pytest.raises(flight.FlightUnauthenticatedError) as refused:
        list(flight.FlightClient(server.location).list_actions(call_options))
    assert reason in str(refused.value)
    no_traceback(refused.value)


def test_a_valid_token_lists_the_actions_whatever_its_permissions(server, tokens):
    # Authentication, not authorization: list_actions needs a valid token only.
    with client(server, tokens["nobody"]) as c:
        actions = dict(c.list_actions())
    assert {"offline_write_batch", "persist", ACTION_DROP, ACTION_STATS} <= set(actions)


# --- which authenticator each auth config builds -----------------------------------------------


def test_authenticator_for_each_auth_type(idp):
    assert type(authenticator_for(NoAuthConfig(type="no_auth"))) is Authenticator
    assert not authenticator_for(NoAuthConfig(type="no_auth")).enforces_permissions
    oidc = authenticator_for(
        OidcAuthConfig(type="oidc", auth_discovery_url=idp.discovery_url, client_id="flightlab")
    )
    assert isinstance(oidc, TokenAuthenticator)
    assert oidc.kind == "oidc" and oidc.enforces_permissions


def test_kubernetes_auth_without_a_cluster_fails_naming_what_is_missing(repo, tmp_path):
    """Kubernetes auth cannot run here (no cluster): it fails with one clear line,
    from Python and from the CLI, never a traceback."""
    config = KubernetesAuthConfig(type="kubernetes")
    with pytest.raises(AuthConfigError) as refused:
        authenticator_for(config)
    if importlib.util.find_spec("kubernetes") is None:
        assert "needs the 'kubernetes' package" in str(refused.value)
    else:
        assert "KUBERNETES_SERVICE_HOST" not in os.environ, "this test expects no cluster"
        assert "cannot start here" in str(refused.value)

    k8s_repo = tmp_path / "k8s_repo"
    shutil.copytree(repo, k8s_repo)
    yaml = (k8s_repo / "feature_store.yaml").read_text()
    (k8s_repo / "feature_store.yaml").write_text(
        yaml.split("auth:")[0] + "auth:\n  type: kubernetes\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "flightlab", "-c", str(k8s_repo), "serve_offline", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "auth type 'kubernetes'" in done.stderr
    assert "Traceback" not in done.stderr
