"""Error classes as Feast's stock client sees them: each refusal is its Flight class.

Feast's unmodified ``type: remote`` client, denied a read or a write, not
authenticated, over the entity-row cap (a second server of the repo, capped
at 5 rows) or asking for an unknown feature, gets an instance of the Flight
class of the refusal, re-created by Feast from the detail as the class the
server named. And every flightlab error, decoded by Feast's own decoder,
is its Flight class (and flightlab's or Feast's class).
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
from feast import FeatureStore
from feast.errors import FeastPermissionError
from feast.infra.offline_stores.remote import RemoteOfflineStore as FeastRemoteOfflineStore
from security_helpers import (
    FEATURES,
    assert_clean_and_serving,
    client_repo,
    feast_store,
    new_driver_rows,
    no_traceback,
)

from flightlab.errors import AuthenticationFailedError, ResourceExhaustedError
from flightlab.server import OfflineServer
from flightlab.server.limits import ServerLimits
from flightlab.testing.sample_repo import entity_frame


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
