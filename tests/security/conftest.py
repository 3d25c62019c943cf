"""What every security suite shares: the IdP, its tokens, and one server repo.

A loopback OpenID provider (discovery document + JWKS over HTTP,
:mod:`security_helpers`) signs RS256 JWTs whose claims carry roles and
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

So what is allowed differs per API and per user (``USERS`` says who is who).
The fixtures are package-scoped: one ``feast apply`` and one plaintext server
serve all the files of the package (module-scoped, each file would build its
own). Fixtures only one file uses are in that file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from feast import FeatureStore
from offline_helpers import arrow, logged_rows
from security_helpers import PERSISTED_FILE, OidcProvider, new_driver_rows

from flightlab.server import OfflineServer
from flightlab.testing.processes import feast_apply
from flightlab.testing.sample_repo import DAYS, START, create_sample_repo, entity_frame
from flightlab.wire import protocol

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


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="package")
def idp() -> Iterator[OidcProvider]:
    provider = OidcProvider()
    yield provider
    provider.close()


@pytest.fixture(scope="package")
def tokens(idp) -> dict[str, str]:
    """A valid token per user, and the invalid ones (expired, forged, garbage)."""
    issued = {user: idp.token(user, roles, groups) for user, (roles, groups) in USERS.items()}
    # Beyond the 10 s of clock skew Feast's parser tolerates.
    issued["expired_token"] = idp.token("ada", ("reader", "writer"), expires_in=-120)
    issued["wrong_signature"] = idp.token("ada", ("reader", "writer"), foreign=True)
    issued["garbage"] = "not-a-jwt"
    return issued


@pytest.fixture(scope="package")
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


@pytest.fixture(scope="package")
def local(repo) -> FeatureStore:
    """The server repo's own store, read directly (no server, no permission check)."""
    return FeatureStore(repo_path=str(repo))


@pytest.fixture(scope="package")
def server(repo) -> Iterator[OfflineServer]:
    """One plaintext server, shared by every file of the package."""
    with OfflineServer(repo, port=0) as running:
        yield running


@pytest.fixture(scope="package")
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
