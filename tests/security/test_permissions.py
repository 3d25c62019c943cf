"""Feast's permissions, per endpoint and per user, on a server with OIDC auth.

Every API with each kind of caller (allowed, denied by role, granted nothing,
no token, an expired token, a forged one): the allowed call does its work,
every refusal names the action and the resource, changes nothing on the
server's disk, and leaves the server clean and serving. Then the cases the
matrix cannot show: persist also needs read permission on what it retrieves
and writes only to registered destinations it is granted; a pull of an
unregistered source is checked against what it points at; ``entity_df_sql``
is refused; a group policy grants one feature view and no other; an on-demand
view needs read permission on its source views.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
from feast import FileSource
from feast.errors import FeastPermissionError
from feast.infra.offline_stores.file_source import SavedDatasetFileStorage
from offline_helpers import arrow
from security_helpers import (
    assert_clean_and_serving,
    assert_denied,
    assert_unauthenticated,
    client,
    no_traceback,
    side_effects,
)

from flightlab.client.transport import OfflineFlightClient
from flightlab.operations.options import ServiceOptions
from flightlab.server import OfflineServer
from flightlab.testing.sample_repo import DAYS, entity_frame
from flightlab.wire import protocol

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


# --- the permission matrix ------------------------------------------------------------


def run(flight_client: OfflineFlightClient, request: protocol.Request) -> pa.Table | dict[str, Any]:
    if request.returns_data:
        return flight_client.fetch(request)
    return flight_client.run_action(request)


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


def test_an_export_needs_read_permission_on_what_it_retrieves(repo, tokens, api_requests, tmp_path):
    exports = tmp_path / "exports"
    exports.mkdir()
    service = ServiceOptions(export_location=str(exports))
    retrieval = api_requests["get_historical_features"]()
    with OfflineServer(repo, port=0, service=service) as exporting:
        # walt may write driver_stats, but not read it: no file is written.
        with client(exporting, tokens["walt"]) as c, pytest.raises(FeastPermissionError) as denied:
            c.run_action(protocol.ExportRetrieval(retrieval=retrieval))
        assert_denied(denied.value, "READ_OFFLINE", "FeatureView:driver_stats")
        assert list(exports.iterdir()) == []
        with client(exporting, tokens["rita"]) as c:
            files = c.run_action(protocol.ExportRetrieval(retrieval=retrieval))["files"]
            expected = c.fetch(retrieval)
        exported = pa.concat_tables(pq.read_table(f) for f in files)
        keys = [("driver_id", "ascending"), ("event_timestamp", "ascending")]
        assert exported.sort_by(keys).equals(expected.sort_by(keys))
        assert_clean_and_serving(exporting, tokens)
