"""Security of a flightlab server: real OIDC, Feast permissions, per-user staging, TLS, mTLS.

Nothing is mocked. A loopback OpenID provider (discovery document + JWKS over
HTTP, :mod:`security_helpers`) signs RS256 JWTs whose claims carry roles and
groups; the server repo's ``feature_store.yaml`` has ``auth: {type: oidc}``
pointing at it, and its ``permissions.py`` (applied with the real ``feast
apply``) holds several Permission objects:

- ``readers``: role ``reader`` -> READ_OFFLINE (and DESCRIBE) on everything;
- ``writers``: role ``writer`` -> WRITE_OFFLINE on everything;
- ``driver-team``: group ``driver-team`` -> READ_OFFLINE on the feature view
  ``driver_stats`` only;
- ``odfv-team``: group ``odfv-team`` -> READ_OFFLINE on on-demand feature views;
- ``persisters``: role ``persister`` -> WRITE_OFFLINE on the data source
  ``persisted_training_set`` only.

So what is allowed differs per API and per user. Certificates (a CA, a server
certificate for 127.0.0.1/localhost, a client certificate, an unrelated CA and
a client certificate it signed) are generated at test time with
``cryptography``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
import yaml
from feast import FeatureStore, FileSource
from feast.errors import FeastPermissionError
from feast.infra.offline_stores.file_source import SavedDatasetFileStorage
from feast.infra.offline_stores.remote import RemoteOfflineStore as FeastRemoteOfflineStore
from feast.permissions.auth_model import (
    KubernetesAuthConfig,
    NoAuthConfig,
    OidcAuthConfig,
    OidcClientAuthConfig,
)
from offline_helpers import logged_rows
from security_helpers import BearerToken, OidcProvider, Pki, make_pki

from flightlab.client import RemoteOfflineStore
from flightlab.client.transport import OfflineFlightClient, translated_errors
from flightlab.errors import (
    AuthenticationFailedError,
    ConnectionFailedError,
    ResourceExhaustedError,
    UnknownCommandError,
)
from flightlab.server import OfflineServer, ServerTls
from flightlab.server.auth import (
    AuthConfigError,
    Authenticator,
    TokenAuthenticator,
    authenticator_for,
)
from flightlab.server.limits import ServerLimits
from flightlab.testing.processes import feast_apply, running_server, serve_offline_command
from flightlab.testing.sample_repo import DAYS, START, create_sample_repo, entity_frame
from flightlab.wire import protocol
from flightlab.wire.actions import ACTION_DROP, ACTION_STATS
from flightlab.wire.headers import AUTHORIZATION_HEADER

PROJECT = "flightlab_sample"
CALL_TIMEOUT = 30.0  # no call of these tests may hang
PERSISTED_FILE = "persisted_training_set.parquet"

PERMISSIONS = """\
from feast import FeatureView
from feast.data_source import DataSource
from feast.feast_object import ALL_RESOURCE_TYPES
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.permissions.action import AuthzedAction
from feast.permissions.permission import Permission
from feast.permissions.policy import GroupBasedPolicy, RoleBasedPolicy

readers = Permission(
    name="readers",
    types=ALL_RESOURCE_TYPES,
    policy=RoleBasedPolicy(roles=["reader"]),
    actions=[AuthzedAction.READ_OFFLINE, AuthzedAction.DESCRIBE],
)
writers = Permission(
    name="writers",
    types=ALL_RESOURCE_TYPES,
    policy=RoleBasedPolicy(roles=["writer"]),
    actions=[AuthzedAction.WRITE_OFFLINE],
)
driver_team = Permission(
    name="driver-team",
    types=[FeatureView],
    name_patterns=["driver_stats"],
    policy=GroupBasedPolicy(groups=["driver-team"]),
    actions=[AuthzedAction.READ_OFFLINE],
)
odfv_team = Permission(
    name="odfv-team",
    types=[OnDemandFeatureView],
    policy=GroupBasedPolicy(groups=["odfv-team"]),
    actions=[AuthzedAction.READ_OFFLINE],
)
persisters = Permission(
    name="persisters",
    types=[DataSource],
    name_patterns=["persisted_training_set"],
    policy=RoleBasedPolicy(roles=["persister"]),
    actions=[AuthzedAction.WRITE_OFFLINE],
)
"""

# A registered destination for persist (by name).
PERSIST_DESTINATION = f'''

persisted_training_set = FileSource(
    name="persisted_training_set",
    path=str(DATA / "{PERSISTED_FILE}"),
    timestamp_field="event_timestamp",
)
'''

# Who is who: (roles, groups) in the token's claims.
USERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ada": (("reader", "writer"), ()),  # may do everything
    "rita": (("reader",), ()),  # reads only
    "walt": (("writer",), ()),  # writes only
    "gina": ((), ("driver-team",)),  # the feature view driver_stats only
    "otto": ((), ("odfv-team",)),  # on-demand views only, not their sources
    "gino": ((), ("driver-team", "odfv-team")),  # an on-demand view and its source
    "pia": (("reader", "persister"), ()),  # reads, and persists to one destination only
    "nobody": ((), ()),  # authenticated, but granted nothing
}

APIS = [
    "get_historical_features",
    "pull_latest_from_table_or_query",
    "pull_all_from_table_or_query",
    "get_table_column_names_and_types_from_data_source",
    "validate_data_source",
    "offline_write_batch",
    "write_logged_features",
    "persist",
]
# For each API: a user it allows, a user it denies, and what the denial names.
ALLOWED_USER = {api: "rita" for api in APIS[:5]} | {
    "offline_write_batch": "walt",
    "write_logged_features": "walt",
    "persist": "ada",  # reads the view and writes the destination
}
DENIED = {
    "get_historical_features": ("walt", "READ_OFFLINE", "FeatureView:driver_stats"),
    "pull_latest_from_table_or_query": ("walt", "READ_OFFLINE", "FileSource:driver_stats_source"),
    "pull_all_from_table_or_query": ("walt", "READ_OFFLINE", "FileSource:driver_stats_source"),
    "get_table_column_names_and_types_from_data_source": (
        "walt",
        "READ_OFFLINE",
        "FileSource:driver_stats_source",
    ),
    "validate_data_source": ("walt", "READ_OFFLINE", "FileSource:driver_stats_source"),
    "offline_write_batch": ("rita", "WRITE_OFFLINE", "FeatureView:driver_stats"),
    "write_logged_features": ("rita", "WRITE_OFFLINE", "FeatureService:driver_activity"),
    "persist": ("rita", "WRITE_OFFLINE", "FileSource:persisted_training_set"),
}
# What an API denied to a user without any role or group names first.
DENIED_TO_NOBODY = {api: DENIED[api][1:] for api in APIS}
BAD_CREDENTIALS = ["no_token", "expired_token", "wrong_signature"]
MATRIX_CASES = ["allowed", "denied", "denied_no_grants", *BAD_CREDENTIALS]


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcProvider]:
    provider = OidcProvider()
    yield provider
    provider.close()


@pytest.fixture(scope="module")
def tokens(idp) -> dict[str, str]:
    """A valid token per user, and the invalid ones (expired, forged, garbage)."""
    issued = {user: idp.token(user, roles, groups) for user, (roles, groups) in USERS.items()}
    # Beyond the 10 s of clock skew Feast's parser tolerates.
    issued["expired_token"] = idp.token("ada", ("reader", "writer"), expires_in=-120)
    issued["wrong_signature"] = idp.token("ada", ("reader", "writer"), foreign=True)
    issued["garbage"] = "not-a-jwt"
    return issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def repo(idp, tmp_path_factory) -> Path:
    """The sample repo with OIDC auth and permissions.py, applied with `feast apply`."""
    path = tmp_path_factory.mktemp("security").resolve() / "server"
    create_sample_repo(path, apply=False)
    config = path / "feature_store.yaml"
    config.write_text(
        config.read_text()
        + "auth:\n"
        + "  type: oidc\n"
        + f"  auth_discovery_url: {idp.discovery_url}\n"
        + "  client_id: flightlab\n"
    )
    (path / "permissions.py").write_text(PERMISSIONS)
    with (path / "definitions.py").open("a") as definitions:
        definitions.write(PERSIST_DESTINATION)
    feast_apply(path)
    return path


@pytest.fixture(scope="module")
def local(repo) -> FeatureStore:
    """The server repo's own store, read directly (no server, no permission check)."""
    return FeatureStore(repo_path=str(repo))


@pytest.fixture(scope="module")
def server(repo) -> Iterator[OfflineServer]:
    """One plaintext server shared by the permission matrix."""
    with OfflineServer(repo, port=0) as running:
        yield running


@pytest.fixture(scope="module")
def tls_server(repo, pki) -> Iterator[OfflineServer]:
    with OfflineServer(
        repo, port=0, tls=ServerTls.from_files(pki.server_cert, pki.server_key)
    ) as s:
        yield s


@pytest.fixture(scope="module")
def mtls_server(repo, pki) -> Iterator[OfflineServer]:
    tls = ServerTls.from_files(pki.server_cert, pki.server_key, client_ca=pki.ca)
    with OfflineServer(repo, port=0, tls=tls) as s:
        yield s


@pytest.fixture(scope="module")
def api_requests(local) -> dict[str, Callable[[], protocol.Request]]:
    """A valid request of each API, naming real objects of the server's registry."""
    source = local.get_data_source("driver_stats_source")
    source_bytes = source.to_proto().SerializeToString()
    historical = protocol.GetHistoricalFeatures(
        features=("driver_stats:conv_rate", "driver_stats:acc_rate"),
        entity_df=arrow(entity_frame(8, with_request_data=False)),
    )
    pull = {
        "data_source_name": "driver_stats_source",
        "join_key_columns": ("driver_id",),
        "feature_name_columns": ("conv_rate", "acc_rate", "avg_daily_trips"),
        "timestamp_field": "event_timestamp",
        "created_timestamp_column": "created",
        "start_date": START,
        "end_date": START + timedelta(days=DAYS),
    }
    hours = iter(range(1, 10_000))
    return {
        "get_historical_features": lambda: historical,
        "pull_latest_from_table_or_query": lambda: protocol.PullLatestFromTableOrQuery(**pull),
        "pull_all_from_table_or_query": lambda: protocol.PullAllFromTableOrQuery(**pull),
        "get_table_column_names_and_types_from_data_source": lambda: (
            protocol.GetTableColumnNamesAndTypes(data_source=source_bytes)
        ),
        "validate_data_source": lambda: protocol.ValidateDataSource(data_source=source_bytes),
        # Each write appends rows later than any other (so no read changes).
        "offline_write_batch": lambda: protocol.OfflineWriteBatch(
            feature_view_name="driver_stats", table=arrow(new_driver_rows(next(hours)))
        ),
        "write_logged_features": lambda: protocol.WriteLoggedFeatures(
            feature_service_name="driver_activity", data=logged_rows(local)
        ),
        "persist": lambda: protocol.Persist(
            retrieval=historical, destination_name="persisted_training_set", allow_overwrite=True
        ),
    }


# --- helpers -------------------------------------------------------------------------


def arrow(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False)


def new_driver_rows(hours_after_end: int, drivers: tuple[int, ...] = (1001, 1002)) -> pd.DataFrame:
    at = START + timedelta(days=DAYS, hours=hours_after_end)
    n = len(drivers)
    return pd.DataFrame(
        {
            "driver_id": pd.Series(drivers, dtype="int64"),
            "event_timestamp": pd.Series([at] * n).dt.as_unit("us"),
            "conv_rate": pd.Series([0.5] * n, dtype="float32"),
            "acc_rate": pd.Series([0.5] * n, dtype="float32"),
            "avg_daily_trips": pd.Series([42] * n, dtype="int64"),
            "created": pd.Series([at + timedelta(minutes=1)] * n).dt.as_unit("us"),
        }
    )


def client(
    server: OfflineServer, token: str | None = None, location: str | None = None, **kwargs: Any
) -> OfflineFlightClient:
    """A flightlab client of ``server`` that sends ``token`` (if any) on every call."""
    if token is not None:
        kwargs["middleware"] = [BearerToken(token)]
    return OfflineFlightClient(location or server.location, timeout=CALL_TIMEOUT, **kwargs)


def raw_client(
    server: OfflineServer, token: str | None = None, **kwargs: Any
) -> flight.FlightClient:
    if token is not None:
        kwargs["middleware"] = [BearerToken(token)]
    return flight.FlightClient(server.location, **kwargs)


def options() -> flight.FlightCallOptions:
    return flight.FlightCallOptions(timeout=CALL_TIMEOUT)


def run(flight_client: OfflineFlightClient, request: protocol.Request) -> pa.Table | dict[str, Any]:
    if request.returns_data:
        return flight_client.fetch(request)
    return flight_client.run_action(request)


def no_traceback(exc: BaseException) -> None:
    """Neither the error nor what it was raised from carries a traceback."""
    seen = exc
    while seen is not None:
        assert "Traceback" not in str(seen), str(seen)
        assert 'File "' not in str(seen), str(seen)
        seen = seen.__cause__


def assert_unauthenticated(exc: BaseException) -> None:
    assert isinstance(exc, AuthenticationFailedError), repr(exc)
    assert isinstance(exc.__cause__, flight.FlightUnauthenticatedError), repr(exc.__cause__)
    no_traceback(exc)


def assert_denied(exc: BaseException, action: str, resource: str) -> None:
    assert isinstance(exc, FeastPermissionError), repr(exc)
    assert isinstance(exc.__cause__, flight.FlightUnauthorizedError), repr(exc.__cause__)
    message = str(exc)
    assert action in message, message
    assert resource in message, message
    no_traceback(exc)


def assert_clean_and_serving(server: OfflineServer, tokens: dict[str, str]) -> None:
    """The server holds no staged command and still answers an allowed call."""
    assert server.stats_json()["staged_commands"] == 0
    with client(server, tokens["rita"]) as c:
        request = protocol.PullLatestFromTableOrQuery(
            data_source_name="customer_stats_source",
            join_key_columns=("customer_id",),
            feature_name_columns=("avg_rating",),
            timestamp_field="event_timestamp",
            start_date=START,
            end_date=START + timedelta(days=DAYS),
        )
        assert c.fetch(request).num_rows == 5
    assert server.stats_json()["staged_commands"] == 0


def file_state(path: Path) -> tuple[int, int] | None:
    """Rows and mtime of a parquet file, or None when it does not exist."""
    if not path.exists():
        return None
    return pq.read_metadata(path).num_rows, path.stat().st_mtime_ns


def side_effects(repo: Path) -> dict[str, Any]:
    """What a write could change on the server's disk."""
    data = repo / "data"
    return {
        "driver_stats": file_state(data / "driver_stats.parquet"),
        "logs": sorted(str(f) for f in (data / "logs").rglob("*.parquet")),
        "persisted": file_state(data / PERSISTED_FILE),
    }


# --- the permission matrix ------------------------------------------------------------


def check_allowed(api: str, result: pa.Table | dict[str, Any], before: dict, after: dict) -> None:
    if api == "get_historical_features":
        assert result.num_rows == 8
        assert {"conv_rate", "acc_rate"} <= set(result.column_names)
    elif api == "pull_latest_from_table_or_query":
        assert result.num_rows == 10  # one row per driver
    elif api == "pull_all_from_table_or_query":
        assert result.num_rows == 10 * DAYS * 24
    elif api == "get_table_column_names_and_types_from_data_source":
        assert {"driver_id", "conv_rate", "event_timestamp"} <= set(
            result.column("name").to_pylist()
        )
    elif api == "validate_data_source":
        assert result == {"validated": "driver_stats_source"}
    elif api == "offline_write_batch":
        assert result == {"rows_written": 2}
        assert after["driver_stats"][0] == before["driver_stats"][0] + 2
    elif api == "write_logged_features":
        assert result == {"rows_written": 3}
        assert len(after["logs"]) > len(before["logs"])
    elif api == "persist":
        assert after["persisted"] is not None and after["persisted"] != before["persisted"]
        assert after["persisted"][0] == 8


@pytest.mark.parametrize("case", MATRIX_CASES)
@pytest.mark.parametrize("api", APIS)
def test_permission_matrix(api, case, server, repo, tokens, api_requests):
    request = api_requests[api]()
    assert request.api == api
    user = {
        "allowed": ALLOWED_USER[api],
        "denied": DENIED[api][0],
        "denied_no_grants": "nobody",
        "no_token": None,
    }.get(case, case)
    before = side_effects(repo)

    with client(server, tokens[user] if user else None) as c:
        if case == "allowed":
            check_allowed(api, run(c, request), before, side_effects(repo))
        else:
            with pytest.raises(Exception) as refused:
                run(c, request)
            if case == "denied":
                assert_denied(refused.value, *DENIED[api][1:])
            elif case == "denied_no_grants":
                assert_denied(refused.value, *DENIED_TO_NOBODY[api])
            else:
                assert_unauthenticated(refused.value)
                if case == "expired_token":
                    assert "expired" in str(refused.value)
            # A refused request changes nothing on the server's disk.
            assert side_effects(repo) == before
    assert_clean_and_serving(server, tokens)


def test_persist_also_needs_read_permission_on_what_it_retrieves(
    server, repo, tokens, api_requests
):
    # walt may write the destination, but not read the feature view.
    before = side_effects(repo)
    with client(server, tokens["walt"]) as c, pytest.raises(FeastPermissionError) as denied:
        c.run_action(api_requests["persist"]())
    assert_denied(denied.value, "READ_OFFLINE", "FeatureView:driver_stats")
    assert side_effects(repo) == before
    assert_clean_and_serving(server, tokens)


def test_persist_writes_only_to_registered_destinations_it_is_granted(
    server, repo, local, tokens, api_requests, tmp_path
):
    """On a server with auth, a ``storage`` the client makes up is refused even
    for the blanket writer: it could name any file the server can write. A
    storage that is a registered source is checked against that source."""
    retrieval = api_requests["get_historical_features"]()
    elsewhere = tmp_path / "elsewhere.parquet"
    made_up = SavedDatasetFileStorage(path=str(elsewhere)).to_proto().SerializeToString()
    destination = Path(local.get_data_source("persisted_training_set").path)
    registered = SavedDatasetFileStorage(path=str(destination)).to_proto().SerializeToString()
    for user in ("pia", "ada"):
        before = side_effects(repo)
        with client(server, tokens[user]) as c, pytest.raises(FeastPermissionError) as denied:
            c.run_action(protocol.Persist(retrieval=retrieval, storage=made_up))
        assert "registered data source" in str(denied.value)
        no_traceback(denied.value)
        assert side_effects(repo) == before
    assert not elsewhere.exists()
    with client(server, tokens["pia"]) as c:
        by_storage = c.run_action(
            protocol.Persist(retrieval=retrieval, storage=registered, allow_overwrite=True)
        )
        by_name = c.run_action(
            protocol.Persist(
                retrieval=retrieval, destination_name="persisted_training_set", allow_overwrite=True
            )
        )
    assert str(destination) in by_storage["persisted_to"]
    assert str(destination) in by_name["persisted_to"]
    assert pq.read_metadata(destination).num_rows == 8
    assert_clean_and_serving(server, tokens)


def test_a_pull_of_an_unregistered_source_is_checked_against_what_it_points_at(
    server, local, tokens, tmp_path
):
    """A pull may carry the source itself (for a saved dataset's storage). On a
    server with auth, it must point where a registered object stores its rows,
    and it is that object's permissions that count."""
    registered = local.get_data_source("driver_stats_source")

    def pull_of(source: FileSource) -> protocol.Request:
        return protocol.PullAllFromTableOrQuery(
            data_source_name="",
            data_source=source.to_proto().SerializeToString(),
            join_key_columns=("driver_id",),
            feature_name_columns=("conv_rate",),
            timestamp_field="event_timestamp",
        )

    same_file = FileSource(path=registered.path, timestamp_field="event_timestamp")
    with client(server, tokens["rita"]) as c:
        assert c.fetch(pull_of(same_file)).num_rows > 0
    with client(server, tokens["nobody"]) as c, pytest.raises(FeastPermissionError) as denied:
        c.fetch(pull_of(same_file))
    assert_denied(denied.value, "READ_OFFLINE", "FileSource:driver_stats_source")

    elsewhere = tmp_path / "elsewhere.parquet"
    pq.write_table(pa.table({"driver_id": [1], "conv_rate": [0.5]}), elsewhere)
    made_up = FileSource(path=str(elsewhere), timestamp_field="event_timestamp")
    with client(server, tokens["ada"]) as c, pytest.raises(FeastPermissionError) as refused:
        c.fetch(pull_of(made_up))
    assert "neither registered nor the storage of a registered saved dataset" in str(refused.value)
    no_traceback(refused.value)
    assert_clean_and_serving(server, tokens)


def test_entity_sql_is_refused_on_a_server_with_auth(server, tokens):
    # It would run the client's SQL with the server's credentials, past every
    # feature-view permission: even the blanket reader may not send it.
    request = protocol.GetHistoricalFeatures(
        features=("driver_stats:conv_rate",), entity_df_sql="SELECT * FROM anything"
    )
    with client(server, tokens["rita"]) as c, pytest.raises(FeastPermissionError) as denied:
        c.fetch(request)
    assert "entity_df_sql" in str(denied.value)
    assert isinstance(denied.value.__cause__, flight.FlightUnauthorizedError)
    assert_clean_and_serving(server, tokens)


def historical(features: tuple[str, ...], with_request_data: bool = False) -> protocol.Request:
    frame = entity_frame(6, with_request_data=with_request_data)
    return protocol.GetHistoricalFeatures(features=features, entity_df=arrow(frame))


def test_a_group_policy_grants_one_feature_view_and_no_other(server, tokens):
    with client(server, tokens["gina"]) as c:
        table = c.fetch(historical(("driver_stats:conv_rate",)))
        assert table.num_rows == 6 and "conv_rate" in table.column_names
        with pytest.raises(FeastPermissionError) as denied:
            c.fetch(historical(("customer_stats:avg_rating",)))
        assert_denied(denied.value, "READ_OFFLINE", "FeatureView:customer_stats")
        # One view allowed and one not: the whole retrieval is refused.
        with pytest.raises(FeastPermissionError) as denied:
            c.fetch(historical(("driver_stats:conv_rate", "customer_stats:avg_rating")))
        assert_denied(denied.value, "READ_OFFLINE", "FeatureView:customer_stats")
        # Nor does the group reach the view's data source.
        pull = protocol.PullAllFromTableOrQuery(
            data_source_name="driver_stats_source",
            join_key_columns=("driver_id",),
            feature_name_columns=("conv_rate",),
            timestamp_field="event_timestamp",
        )
        with pytest.raises(FeastPermissionError) as denied:
            c.fetch(pull)
        assert_denied(denied.value, "READ_OFFLINE", "FileSource:driver_stats_source")
    assert_clean_and_serving(server, tokens)


def test_an_on_demand_view_needs_read_permission_on_its_source_views(server, tokens):
    odfv = ("conv_rate_plus_val:conv_rate_plus_val",)
    # otto may read on-demand views, but not driver_stats they compute from.
    with client(server, tokens["otto"]) as c, pytest.raises(FeastPermissionError) as denied:
        c.fetch(historical(odfv, with_request_data=True))
    assert_denied(denied.value, "READ_OFFLINE", "FeatureView:driver_stats")
    # gina may read driver_stats, but not the on-demand view.
    with client(server, tokens["gina"]) as c, pytest.raises(FeastPermissionError) as denied:
        c.fetch(historical(odfv, with_request_data=True))
    assert_denied(denied.value, "READ_OFFLINE", "OnDemandFeatureView:conv_rate_plus_val")
    # gino has both groups.
    with client(server, tokens["gino"]) as c:
        table = c.fetch(historical(odfv, with_request_data=True))
    assert table.num_rows == 6
    assert table.column("conv_rate_plus_val").null_count < 6
    assert_clean_and_serving(server, tokens)


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


def _raw_put(c: flight.FlightClient, command_id: str) -> None:
    table = pa.table({"features": ["driver_stats:conv_rate"]})
    schema = table.schema.with_metadata(
        protocol.put_metadata(command_id, "get_historical_features", "features")
    )
    writer, _ = c.do_put(protocol.command_descriptor(command_id), schema, options())
    writer.write_table(table.replace_schema_metadata(schema.metadata))
    writer.close()


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


# --- staged commands belong to whoever staged them ----------------------------------------


def listed(raw: flight.FlightClient) -> list[str]:
    """The command ids list_flights shows this caller."""
    return [i.descriptor.command.decode() for i in raw.list_flights(b"", options())]


def action_result(raw: flight.FlightClient, action: str, command_id: str) -> Any:
    results = list(
        raw.do_action(flight.Action(action, protocol.ticket_bytes(command_id)), options())
    )
    return json.loads(results[0].body.to_pybytes())


def test_staged_commands_are_invisible_to_another_user(server, tokens, api_requests, repo):
    """rita stages a read and walt a write. ada, who may read and write
    everything, can neither list, read, run, drop nor extend either command;
    each owner still can afterwards."""
    read = api_requests["get_historical_features"]()
    write = api_requests["offline_write_batch"]()
    with client(server, tokens["rita"]) as c:
        read_id = c.stage(read)
    with client(server, tokens["walt"]) as c:
        write_id = c.stage(write)
    assert server.stats_json()["staged_commands"] == 2
    rita, walt = raw_client(server, tokens["rita"]), raw_client(server, tokens["walt"])
    ada = raw_client(server, tokens["ada"])

    assert listed(ada) == []
    for command_id in (read_id, write_id):
        # Someone else's command looks exactly like one never staged.
        never_staged = protocol.new_command_id()
        for read_call in (
            lambda cid: ada.get_flight_info(protocol.command_descriptor(cid), options()),
            lambda cid: ada.do_get(flight.Ticket(protocol.ticket_bytes(cid)), options()).read_all(),
        ):
            messages = []
            for cid in (command_id, never_staged):
                with pytest.raises(flight.FlightServerError) as info:
                    read_call(cid)
                no_traceback(info.value)
                messages.append(str(info.value).replace(cid, "<id>"))
            assert "no staged command" in messages[0]
            assert messages[0] == messages[1]
        assert action_result(ada, ACTION_DROP, command_id) == {"dropped": False}
    # Running walt's write as ada: not found (mapped back to flightlab's class).
    with pytest.raises(UnknownCommandError) as unknown, translated_errors():
        action_result(ada, write.api, write_id)
    assert "no staged command" in str(unknown.value)
    # Adding a parameter to another user's command is refused, and does not drop it.
    with pytest.raises(flight.FlightServerError) as taken:
        _raw_put(ada, read_id)
    assert "taken" in str(taken.value)
    assert server.stats_json()["staged_commands"] == 2

    # Each owner sees only their own command...
    assert listed(rita) == [read_id]
    assert listed(walt) == [write_id]
    # ...and still reads, runs and drops it.
    info = rita.get_flight_info(protocol.command_descriptor(read_id), options())
    assert rita.do_get(info.endpoints[0].ticket, options()).read_all().num_rows == 8
    rows_before = side_effects(repo)["driver_stats"][0]
    assert action_result(walt, write.api, write_id) == {"rows_written": 2}
    assert side_effects(repo)["driver_stats"][0] == rows_before + 2
    with client(server, tokens["rita"]) as c:
        dropped_id = c.stage(read)
    assert listed(rita) == [dropped_id]
    assert action_result(rita, ACTION_DROP, dropped_id) == {"dropped": True}
    assert listed(rita) == []
    assert_clean_and_serving(server, tokens)


def test_the_stats_action_does_not_show_another_users_errors(server, tokens, api_requests):
    with client(server, tokens["walt"]) as walt, pytest.raises(FeastPermissionError) as denied:
        walt.fetch(api_requests["get_historical_features"]())
    with client(server, tokens["nobody"]) as nobody:
        stats = nobody.stats()
    assert stats["staged_commands"] == 0
    assert "Requires roles" not in json.dumps(stats), str(denied.value)


# --- clients that send the token from their repo's auth config -------------------------------


def client_repo(
    path: Path,
    registry: Path,
    offline_store: dict[str, Any],
    auth: dict[str, Any] | None = None,
) -> FeatureStore:
    (path / "data").mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "project": PROJECT,
        "provider": "local",
        "registry": {"path": str(registry), "cache_ttl_seconds": 0},
        "online_store": {"type": "sqlite", "path": "data/online.db"},
        "offline_store": offline_store,
        "entity_key_serialization_version": 3,
    }
    if auth is not None:
        config["auth"] = auth
    (path / "feature_store.yaml").write_text(yaml.safe_dump(config))
    return FeatureStore(repo_path=str(path))


def flightlab_store(server: OfflineServer, **extra: Any) -> dict[str, Any]:
    return {
        "type": "flightlab.client.RemoteOfflineStore",
        "host": "127.0.0.1",
        "port": server.port,
        "timeout": CALL_TIMEOUT,
        **extra,
    }


def feast_store(server: OfflineServer, **extra: Any) -> dict[str, Any]:
    return {"type": "remote", "host": "127.0.0.1", "port": server.port, **extra}


FEATURES = ["driver_stats:conv_rate", "customer_stats:avg_rating"]
KEYS = ["driver_id", "customer_id", "event_timestamp"]


def same_rows(expected: pd.DataFrame, got: pd.DataFrame) -> None:
    columns = sorted(expected.columns)
    assert sorted(got.columns) == columns

    def tidy(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[columns].sort_values(KEYS).reset_index(drop=True)

    pd.testing.assert_frame_equal(tidy(got), tidy(expected))


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


# --- Feast's stock client: each refusal is an instance of its Flight class -------------------


@pytest.fixture(scope="module")
def capped_server(repo) -> Iterator[OfflineServer]:
    """Another server of the repo, with a cap of 5 entity rows per request."""
    with OfflineServer(repo, port=0, limits=ServerLimits(max_entity_rows=5)) as running:
        yield running


def _stock_read(store: FeatureStore, refs: list[str]) -> None:
    entities = entity_frame(8, seed=6, with_request_data=False)
    store.get_historical_features(entities, refs).to_df()


def _stock_unknown_feature(store: FeatureStore, refs: list[str]) -> None:
    # Straight to the offline store: the client's registry check would find it first.
    store._get_provider().offline_store.get_historical_features(
        config=store.config,
        feature_views=[],
        feature_refs=["driver_stats:no_such_feature"],
        entity_df=entity_frame(4, with_request_data=False),
        registry=store.registry,
        project=store.project,
    ).to_arrow()


def _stock_write(store: FeatureStore, refs: list[str]) -> None:
    store.write_to_offline_store("driver_stats", new_driver_rows(7000, drivers=(1004,)))


# user (None: no token), whether on the capped server, the call, the Flight
# class, the class the detail names, and what the message says.
STOCK_REFUSALS = {
    "denied_read": (
        "walt",
        False,
        _stock_read,
        flight.FlightUnauthorizedError,
        FeastPermissionError,
        "READ_OFFLINE",
    ),
    "denied_write": (
        "rita",
        False,
        _stock_write,
        flight.FlightUnauthorizedError,
        FeastPermissionError,
        "WRITE_OFFLINE",
    ),
    "unauthenticated": (
        None,
        False,
        _stock_read,
        flight.FlightUnauthenticatedError,
        AuthenticationFailedError,
        "no credentials",
    ),
    "over_the_entity_cap": (
        "rita",
        True,
        _stock_read,
        flight.FlightUnavailableError,
        ResourceExhaustedError,
        "--max-entity-rows",
    ),
    "unknown_feature": (
        "rita",
        False,
        _stock_unknown_feature,
        flight.FlightServerError,
        KeyError,
        "no_such_feature",
    ),
}


@pytest.mark.parametrize(
    "user, capped, call, flight_class, named_class, says",
    STOCK_REFUSALS.values(),
    ids=STOCK_REFUSALS.keys(),
)
def test_feasts_stock_client_gets_each_refusal_as_its_flight_class(
    user,
    capped,
    call,
    flight_class,
    named_class,
    says,
    server,
    capped_server,
    repo,
    tokens,
    tmp_path,
):
    target = capped_server if capped else server
    auth = {"type": "oidc", "token": tokens[user]} if user else None
    # No retries of an unavailable server: the refusal itself is checked.
    store_config = feast_store(target, connection_retries=0)
    store = client_repo(tmp_path / "stock", repo / "data" / "registry.db", store_config, auth)
    assert isinstance(store._get_provider().offline_store, FeastRemoteOfflineStore)
    rows_before = pq.read_metadata(repo / "data" / "driver_stats.parquet").num_rows

    with pytest.raises(flight.FlightError) as refused:
        call(store, FEATURES)

    assert isinstance(refused.value, flight_class), repr(refused.value)
    if user is not None:
        # Re-created by Feast from the detail (a refusal met while Feast's client
        # still writes its upload arrives as the bare Flight error instead).
        assert isinstance(refused.value, named_class), repr(refused.value)
    assert says in str(refused.value), str(refused.value)
    no_traceback(refused.value)
    assert pq.read_metadata(repo / "data" / "driver_stats.parquet").num_rows == rows_before
    assert_clean_and_serving(server, tokens)


def test_every_flightlab_error_decoded_by_feast_is_its_flight_class():
    """What each status's detail becomes through Feast's own decoder: the one
    its stock client applies (flightlab's decoder is checked elsewhere)."""
    from feast.arrow_error_handler import _get_exception_data
    from feast.errors import FeastError, FeatureViewNotFoundException
    from filelock import Timeout

    from flightlab import errors
    from flightlab.wire import flight_errors

    flightlab_errors = [
        cls("why")
        for cls in vars(errors).values()
        if isinstance(cls, type)
        and issubclass(cls, errors.FlightlabError)
        # The client's own name for an answer it cannot place: never sent.
        and cls not in (errors.FlightlabError, errors.RemoteServerError)
    ]
    assert len(flightlab_errors) > 10
    foreign = [FeastPermissionError("why"), Timeout("why"), FeatureViewNotFoundException("why")]
    for exc in [*flightlab_errors, errors.PermissionDeniedError("why"), *foreign]:
        status = errors.failure_status(exc)
        sent = flight_errors.to_flight_error(exc)
        flight_class = flight_errors.FLIGHT_CLASS_FOR_STATUS[status]
        assert type(sent) is flight_class
        again = FeastError.from_error_detail(_get_exception_data(str(sent)))
        assert again is not None, repr(exc)
        assert "why" in str(again)
        if isinstance(exc, errors.FlightlabError):
            # The same class, in its Flight form.
            same = flight_errors.flight_class(type(exc))
            assert type(again) is same and isinstance(again, flight_class), (exc, again)
        elif flight_class is not flight.FlightServerError:
            # Sent as flightlab's class of its status: the Flight class, and
            # Feast's own class where there is one.
            assert isinstance(again, flight_class), (exc, again)
            assert isinstance(again, type(exc)) or isinstance(again, errors.FlightlabError)
        else:  # a bad request: Feast's own class, as Feast's server would send it
            assert type(again) is type(exc)


# --- TLS and mTLS ----------------------------------------------------------------------------


def tls_request() -> protocol.Request:
    return protocol.GetHistoricalFeatures(
        features=("driver_stats:conv_rate",),
        entity_df=arrow(entity_frame(4, with_request_data=False)),
    )


def assert_tls_refused(server: OfflineServer, tokens: dict[str, str], **kwargs: Any) -> None:
    """The handshake fails: the client gets ConnectionFailedError (not "busy"),
    the server serves nothing."""
    before = server.stats_json()
    with (
        client(server, tokens["rita"], **kwargs) as c,
        pytest.raises(ConnectionFailedError) as refused,
    ):
        c.fetch(tls_request())
    assert isinstance(refused.value.__cause__, flight.FlightUnavailableError)
    no_traceback(refused.value)
    after = server.stats_json()
    assert after["requests_by_api"] == before["requests_by_api"]
    assert after["staged_commands"] == 0


def good_tls_fetch(server: OfflineServer, tokens: dict[str, str], **kwargs: Any) -> None:
    with client(server, tokens["rita"], **kwargs) as c:
        assert c.fetch(tls_request()).num_rows == 4
    assert server.stats_json()["staged_commands"] == 0


def test_tls_serves_a_client_that_trusts_its_ca(tls_server, pki, tokens):
    assert tls_server.location.startswith("grpc+tls://127.0.0.1:")
    good_tls_fetch(tls_server, tokens, tls_root_certs=pki.ca.read_bytes())
    # The certificate names localhost too.
    localhost = f"grpc+tls://localhost:{tls_server.port}"
    good_tls_fetch(tls_server, tokens, location=localhost, tls_root_certs=pki.ca.read_bytes())
    # TLS does not replace authentication.
    with client(tls_server, tls_root_certs=pki.ca.read_bytes()) as c:
        with pytest.raises(AuthenticationFailedError) as refused:
            c.fetch(tls_request())
    assert_unauthenticated(refused.value)


def test_tls_refuses_a_plaintext_client(tls_server, pki, tokens):
    assert_tls_refused(tls_server, tokens, location=f"grpc+tcp://127.0.0.1:{tls_server.port}")
    good_tls_fetch(tls_server, tokens, tls_root_certs=pki.ca.read_bytes())


@pytest.mark.parametrize("trust", ["other_ca", "system_cas"])
def test_tls_is_refused_by_a_client_that_does_not_trust_the_servers_ca(
    trust, tls_server, pki, tokens
):
    kwargs = {"tls_root_certs": pki.other_ca.read_bytes()} if trust == "other_ca" else {}
    assert_tls_refused(tls_server, tokens, **kwargs)
    good_tls_fetch(tls_server, tokens, tls_root_certs=pki.ca.read_bytes())


def test_mtls_serves_a_client_with_a_certificate_of_its_ca(mtls_server, pki, tokens):
    good_tls_fetch(
        mtls_server,
        tokens,
        tls_root_certs=pki.ca.read_bytes(),
        cert_chain=pki.client_cert.read_bytes(),
        private_key=pki.client_key.read_bytes(),
    )


@pytest.mark.parametrize("client_certificate", ["none", "other_ca", "plaintext"])
def test_mtls_refuses_a_client_without_a_certificate_of_its_ca(
    client_certificate, mtls_server, pki, tokens
):
    kwargs: dict[str, Any] = {"tls_root_certs": pki.ca.read_bytes()}
    if client_certificate == "other_ca":
        kwargs.update(
            cert_chain=pki.other_client_cert.read_bytes(),
            private_key=pki.other_client_key.read_bytes(),
        )
    if client_certificate == "plaintext":
        kwargs = {"location": f"grpc+tcp://127.0.0.1:{mtls_server.port}"}
    assert_tls_refused(mtls_server, tokens, **kwargs)
    good_tls_fetch(
        mtls_server,
        tokens,
        tls_root_certs=pki.ca.read_bytes(),
        cert_chain=pki.client_cert.read_bytes(),
        private_key=pki.client_key.read_bytes(),
    )


def test_client_repos_connect_over_tls_and_mtls(
    tls_server, mtls_server, repo, local, pki, tokens, tmp_path
):
    registry = repo / "data" / "registry.db"
    auth = {"type": "oidc", "token": tokens["rita"]}
    entities = entity_frame(10, seed=6, with_request_data=False)
    expected = local.get_historical_features(entities, FEATURES).to_df()
    https = {"scheme": "https", "cert": str(pki.ca)}
    mtls = {**https, "client_cert": str(pki.client_cert), "client_key": str(pki.client_key)}
    good = {
        "flightlab_tls": flightlab_store(tls_server, **https),
        "flightlab_mtls": flightlab_store(mtls_server, **mtls),
        # Feast's stock client speaks TLS too (it has no client certificate).
        "feast_tls": feast_store(tls_server, **https),
    }
    for name, store_config in good.items():
        store = client_repo(tmp_path / name, registry, store_config, auth)
        same_rows(expected, store.get_historical_features(entities, FEATURES).to_df())

    refused = {
        "plaintext_to_tls": flightlab_store(tls_server),
        "no_ca": flightlab_store(tls_server, scheme="https"),
        "other_ca": flightlab_store(tls_server, scheme="https", cert=str(pki.other_ca)),
        "mtls_without_certificate": flightlab_store(mtls_server, **https),
    }
    for name, store_config in refused.items():
        store = client_repo(tmp_path / name, registry, store_config, auth)
        with pytest.raises(ConnectionFailedError) as error:
            store.get_historical_features(entities, FEATURES).to_df()
        assert isinstance(error.value.__cause__, flight.FlightUnavailableError), name
    assert tls_server.stats_json()["staged_commands"] == 0
    assert mtls_server.stats_json()["staged_commands"] == 0


def test_the_cli_serves_tls_and_stops_on_sigterm(repo, pki, tokens, tmp_path):
    log = tmp_path / "server.log"
    command = serve_offline_command(repo, "-c", str(pki.server_cert), "-k", str(pki.server_key))
    with running_server(command, log=log, timeout=90, stop_signal=signal.SIGKILL) as server:
        line = server.stdout_lines[-1]
        assert line.startswith("flightlab serving grpc+tls://"), line
        location = server.location
        with OfflineFlightClient(
            location,
            timeout=CALL_TIMEOUT,
            tls_root_certs=pki.ca.read_bytes(),
            middleware=[BearerToken(tokens["rita"])],
        ) as c:
            assert c.fetch(tls_request()).num_rows == 4
        with OfflineFlightClient(
            f"grpc+tcp://127.0.0.1:{server.port}",
            timeout=CALL_TIMEOUT,
            middleware=[BearerToken(tokens["rita"])],
        ) as plaintext:
            with pytest.raises(ConnectionFailedError):
                plaintext.fetch(tls_request())

        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        assert "SIGTERM received, stopping" in log.read_text()
        with (
            OfflineFlightClient(location, timeout=5, tls_root_certs=pki.ca.read_bytes()) as gone,
            pytest.raises(ConnectionFailedError),
        ):
            gone.list_actions()


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
