"""Bad requests: each is refused with an error that names the problem.

For every case, on the shared server:

- the bare pyarrow.flight client gets the fitting Flight error class, whose
  JSON detail names the exception class, the status and the problem, and
  carries no server traceback;
- flightlab's client re-raises it as the class the server named (Feast's own
  class where Feast has one, else one of ``flightlab.errors``, in its Flight form);
- nothing stays staged, and the next good request gets the local answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.flight as flight
import pytest
import yaml
from feast import FeatureService, FeatureStore, FileSource
from feast.errors import (
    DataSourceObjectNotFoundException,
    EntityTimestampInferenceException,
    FeatureServiceNotFoundException,
    FeatureViewNotFoundException,
)
from feast.feature_logging import FeatureServiceLoggingSource
from feast.infra.offline_stores.remote import RemoteOfflineStore as FeastRemoteOfflineStore
from offline_helpers import (
    FEATURES,
    arrow,
    assert_no_traceback,
    assert_serving_and_clean,
    flight_error_detail,
    offline_store_of,
    registry_of,
    server_stats,
)

from flightlab import errors
from flightlab.client import RemoteOfflineStore
from flightlab.client.errors import exception_for_flight_error
from flightlab.testing.sample_repo import entity_frame
from flightlab.wire import protocol
from flightlab.wire.flight_errors import (
    FLIGHT_CLASS_FOR_STATUS,
    MalformedParameterError,
    MissingParameterError,
    UnknownApiError,
    UnknownCommandError,
    UnknownParameterError,
    encode_detail,
)

HISTORICAL = "get_historical_features"


# --- a client written from the protocol alone ------------------------------------------


def put(raw: flight.FlightClient, command_id: str, api: str, param: str, table: pa.Table) -> None:
    """One do_put of one parameter, with the protocol's schema metadata."""
    metadata = {"command": command_id, "api": api, "param": param}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    writer, _ = raw.do_put(flight.FlightDescriptor.for_command(command_id), table.schema)
    writer.write_table(table)
    writer.close()


def fetch(raw: flight.FlightClient, command_id: str) -> pa.Table:
    info = raw.get_flight_info(flight.FlightDescriptor.for_command(command_id))
    return raw.do_get(info.endpoints[0].ticket).read_all()


def run_action(raw: flight.FlightClient, api: str, command_id: str) -> list:
    return list(raw.do_action(flight.Action(api, command_id.encode())))


def entities() -> pa.Table:
    return arrow(entity_frame(10, seed=12))


def strings(name: str, *values: str) -> pa.Table:
    return pa.table({name: pa.array(values, pa.string())})


def historical(raw: flight.FlightClient, *features: str, entity_table: pa.Table | None = None):
    command_id = str(uuid.uuid4())
    put(
        raw,
        command_id,
        HISTORICAL,
        "entity_df",
        entities() if entity_table is None else entity_table,
    )
    put(raw, command_id, HISTORICAL, "features", strings("features", *features))
    return fetch(raw, command_id)


def unknown_api_on_put(raw):
    put(raw, str(uuid.uuid4()), "no_such_api", "features", strings("features", FEATURES[0]))


def unknown_api_on_action(raw):
    run_action(raw, "no_such_api", str(uuid.uuid4()))


def unknown_parameter(raw):
    command_id = str(uuid.uuid4())
    put(raw, command_id, HISTORICAL, "entity_df", entities())  # accepted, then dropped
    put(raw, command_id, HISTORICAL, "no_such_param", strings("no_such_param", "x"))


def missing_parameter(raw):
    command_id = str(uuid.uuid4())
    put(raw, command_id, HISTORICAL, "entity_df", entities())
    fetch(raw, command_id)


def features_of_wrong_arrow_type(raw):
    command_id = str(uuid.uuid4())
    put(raw, command_id, HISTORICAL, "entity_df", entities())
    put(raw, command_id, HISTORICAL, "features", pa.table({"features": pa.array([1, 2])}))
    fetch(raw, command_id)


def two_rows_for_a_scalar(raw):
    command_id = str(uuid.uuid4())
    put(raw, command_id, HISTORICAL, "entity_df", entities())
    put(raw, command_id, HISTORICAL, "features", strings("features", FEATURES[0]))
    put(
        raw,
        command_id,
        HISTORICAL,
        "full_feature_names",
        pa.table({"full_feature_names": [True, False]}),
    )
    fetch(raw, command_id)


def wrong_column_name(raw):
    command_id = str(uuid.uuid4())
    put(raw, command_id, HISTORICAL, "entity_df", entities())
    put(raw, command_id, HISTORICAL, "features", strings("feature_refs", FEATURES[0]))
    fetch(raw, command_id)


def unknown_command_id(raw):
    fetch(raw, str(uuid.uuid4()))


def unknown_ticket(raw):
    raw.do_get(flight.Ticket(str(uuid.uuid4()).encode())).read_all()


def unknown_command_for_an_action(raw):
    run_action(raw, "offline_write_batch", str(uuid.uuid4()))


def second_do_get_of_a_consumed_command(raw):
    command_id = str(uuid.uuid4())
    put(raw, command_id, HISTORICAL, "entity_df", entities())
    put(raw, command_id, HISTORICAL, "features", strings("features", FEATURES[0]))
    info = raw.get_flight_info(flight.FlightDescriptor.for_command(command_id))
    assert raw.do_get(info.endpoints[0].ticket).read_all().num_rows == 10
    raw.do_get(info.endpoints[0].ticket).read_all()


def unknown_feature_view(raw):
    historical(raw, "no_such_view:conv_rate")


def unknown_feature_service(raw):
    command_id = str(uuid.uuid4())
    api = "write_logged_features"
    put(
        raw,
        command_id,
        api,
        "feature_service_name",
        strings("feature_service_name", "no_such_service"),
    )
    put(raw, command_id, api, "data", pa.table({"driver_id": [1001]}))
    run_action(raw, api, command_id)


def unknown_data_source(raw):
    command_id = str(uuid.uuid4())
    api = "pull_all_from_table_or_query"
    put(raw, command_id, api, "data_source_name", strings("data_source_name", "no_such_source"))
    put(raw, command_id, api, "join_key_columns", strings("join_key_columns", "driver_id"))
    put(raw, command_id, api, "feature_name_columns", strings("feature_name_columns", "conv_rate"))
    put(raw, command_id, api, "timestamp_field", strings("timestamp_field", "event_timestamp"))
    fetch(raw, command_id)


def entity_data_without_event_timestamp(raw):
    historical(raw, FEATURES[0], entity_table=entities().drop_columns(["event_timestamp"]))


def feature_reference_without_colon(raw):
    historical(raw, "driver_stats")


@dataclass(frozen=True)
class BadInput:
    send: Callable[[flight.FlightClient], object]
    error: type[Exception]
    status: str
    names: tuple[str, ...]  # what the message must mention


BAD_INPUTS = {
    "unknown_api_on_put": BadInput(
        unknown_api_on_put, UnknownApiError, "unimplemented", ("no_such_api",)
    ),
    "unknown_api_on_action": BadInput(
        unknown_api_on_action, UnknownApiError, "unimplemented", ("no_such_api",)
    ),
    "unknown_parameter": BadInput(
        unknown_parameter, UnknownParameterError, "invalid_argument", ("no_such_param",)
    ),
    "missing_parameter": BadInput(
        missing_parameter, MissingParameterError, "invalid_argument", ("'features'",)
    ),
    "wrong_arrow_type": BadInput(
        features_of_wrong_arrow_type,
        MalformedParameterError,
        "invalid_argument",
        ("'features'", "string", "int64"),
    ),
    "two_rows_for_a_scalar": BadInput(
        two_rows_for_a_scalar,
        MalformedParameterError,
        "invalid_argument",
        ("'full_feature_names'", "one row, got 2"),
    ),
    "wrong_column_name": BadInput(
        wrong_column_name,
        MalformedParameterError,
        "invalid_argument",
        ("'features'", "'feature_refs'"),
    ),
    "unknown_command_id": BadInput(
        unknown_command_id, UnknownCommandError, "not_found", ("no staged command",)
    ),
    "unknown_ticket": BadInput(
        unknown_ticket, UnknownCommandError, "not_found", ("no staged command",)
    ),
    "unknown_command_for_an_action": BadInput(
        unknown_command_for_an_action, UnknownCommandError, "not_found", ("no staged command",)
    ),
    "second_do_get": BadInput(
        second_do_get_of_a_consumed_command, UnknownCommandError, "not_found", ("already run",)
    ),
    "unknown_feature_view": BadInput(
        unknown_feature_view, FeatureViewNotFoundException, "not_found", ("no_such_view",)
    ),
    "unknown_feature_service": BadInput(
        unknown_feature_service, FeatureServiceNotFoundException, "not_found", ("no_such_service",)
    ),
    "unknown_data_source": BadInput(
        unknown_data_source, DataSourceObjectNotFoundException, "not_found", ("no_such_source",)
    ),
    "entity_data_without_event_timestamp": BadInput(
        entity_data_without_event_timestamp,
        EntityTimestampInferenceException,
        "invalid_argument",
        ("event_timestamp",),
    ),
    "feature_reference_without_colon": BadInput(
        feature_reference_without_colon,
        MalformedParameterError,
        "invalid_argument",
        ("'driver_stats'", "feature_view:feature"),
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_a_bare_flight_client_gets_a_fitting_error_naming_the_problem(
    case, raw_flight, offline_server, client_store, local_store
):
    errors_before = server_stats(offline_server)["errors_by_api"]

    with pytest.raises(flight.FlightError) as caught:
        case.send(raw_flight)

    error = caught.value
    detail = flight_error_detail(error)
    assert detail["class"] == case.error.__name__
    assert detail["module"] == case.error.__module__
    assert detail["status"] == case.status
    for name in case.names:
        assert name in detail["message"]
    # Bad input is the client's fault: a server error, never an internal one.
    assert type(error) is FLIGHT_CLASS_FOR_STATUS[case.status] is flight.FlightServerError
    assert_no_traceback(str(error))
    assert (
        sum(server_stats(offline_server)["errors_by_api"].values())
        == sum(errors_before.values()) + 1
    )

    # flightlab's client raises the class the server named, with its message.
    raised = exception_for_flight_error(error)
    assert type(raised) is case.error
    assert str(raised) == detail["message"]

    assert_serving_and_clean(offline_server, client_store, local_store)


def test_an_unknown_feature_of_a_known_view_fails_remotely_as_locally(
    client_store, local_store, offline_server
):
    entities = entity_frame(5)
    refs = ["driver_stats:no_such_feature"]
    with pytest.raises(KeyError) as local_error:
        local_store.get_historical_features(entities, refs).to_df()
    # Past the client's own registry check: the server finds it out.
    with pytest.raises(KeyError) as remote_error:
        remote_historical(client_store, entities, refs)
    assert "no_such_feature" in str(remote_error.value)
    assert str(remote_error.value) == str(local_error.value)
    assert_serving_and_clean(offline_server, client_store, local_store)


# --- the same problems, met through flightlab's client ------------------------------------


@dataclass(frozen=True)
class NoSuchApi(protocol.Request):
    api = "no_such_api"
    returns_data = True

    features: tuple[str, ...] = protocol.param(protocol.Kind.STRING_LIST)


@dataclass(frozen=True)
class HistoricalWithoutFeatures(protocol.Request):
    """get_historical_features as a client that forgot 'features' would send it."""

    api = HISTORICAL
    returns_data = True

    entity_df: pa.Table = protocol.param(protocol.Kind.TABLE)


@dataclass(frozen=True)
class HistoricalWithBooleanFeatures(protocol.Request):
    api = HISTORICAL
    returns_data = True

    entity_df: pa.Table = protocol.param(protocol.Kind.TABLE)
    features: bool = protocol.param(protocol.Kind.BOOL)


def remote_historical(client_store, entity_df, refs):
    return RemoteOfflineStore.get_historical_features(
        config=client_store.config,
        feature_views=[],
        feature_refs=refs,
        entity_df=entity_df,
        registry=client_store.registry,
        project=client_store.project,
    ).to_df()


CLIENT_CASES = {
    "unknown_api": (
        lambda store, client: client.fetch(NoSuchApi(features=(FEATURES[0],))),
        UnknownApiError,
        "no_such_api",
    ),
    "missing_parameter": (
        lambda store, client: client.fetch(HistoricalWithoutFeatures(entity_df=entities())),
        MissingParameterError,
        "'features'",
    ),
    "malformed_parameter": (
        lambda store, client: client.fetch(
            HistoricalWithBooleanFeatures(entity_df=entities(), features=True)
        ),
        MalformedParameterError,
        "'features' must be of Arrow type string, got bool",
    ),
    # The client's FeatureStore checks names in its registry first: call the
    # offline store directly so that the server is the one who finds out.
    "unknown_feature_view": (
        lambda store, client: remote_historical(store, entity_frame(5), ["no_such_view:conv_rate"]),
        FeatureViewNotFoundException,
        "no_such_view",
    ),
    "unknown_feature_service": (
        lambda store, client: RemoteOfflineStore.write_logged_features(
            config=store.config,
            data=pa.table({"driver_id": [1001]}),
            source=FeatureServiceLoggingSource(
                FeatureService(name="no_such_service", features=[]), store.project
            ),
            logging_config=store.get_feature_service("driver_activity").logging_config,
            registry=store.registry,
        ),
        FeatureServiceNotFoundException,
        "no_such_service",
    ),
    "unknown_data_source": (
        lambda store, client: RemoteOfflineStore.pull_all_from_table_or_query(
            config=store.config,
            data_source=FileSource(
                name="no_such_source", path="/nowhere.parquet", timestamp_field="event_timestamp"
            ),
            join_key_columns=["driver_id"],
            feature_name_columns=["conv_rate"],
            timestamp_field="event_timestamp",
        ).to_df(),
        DataSourceObjectNotFoundException,
        "no_such_source",
    ),
    "entity_data_without_event_timestamp_on_the_wire": (
        lambda store, client: client.fetch(
            protocol.GetHistoricalFeatures(
                features=(FEATURES[0],),
                entity_df=entities().drop_columns(["event_timestamp"]),
            )
        ),
        EntityTimestampInferenceException,
        "event_timestamp",
    ),
    "entity_data_without_event_timestamp_from_feast": (
        lambda store, client: store.get_historical_features(
            entity_frame(5).drop(columns="event_timestamp"), FEATURES
        ).to_df(),
        EntityTimestampInferenceException,
        "event_timestamp",
    ),
    "feature_reference_without_colon_on_the_wire": (
        lambda store, client: remote_historical(store, entity_frame(5), ["driver_stats"]),
        MalformedParameterError,
        "'driver_stats'",
    ),
    "feature_reference_without_colon_from_feast": (
        lambda store, client: store.get_historical_features(
            entity_frame(5), ["driver_stats"]
        ).to_df(),
        ValueError,
        "'driver_stats'",
    ),
}


@pytest.mark.parametrize("call, error, names", CLIENT_CASES.values(), ids=CLIENT_CASES.keys())
def test_flightlabs_client_raises_an_exception_naming_the_problem(
    call, error, names, client_store, flight_client, offline_server, local_store
):
    with pytest.raises(error) as caught:
        call(client_store, flight_client)
    assert type(caught.value) is error
    assert names in str(caught.value)
    assert_no_traceback(str(caught.value))
    assert_serving_and_clean(offline_server, client_store, local_store)


# --- long values of any characters: the server's error, never gRPC's ----------------------------

# Each is far under the parameter cap but, JSON-escaped, far over what gRPC
# lets through in an error's headers when quoted whole.
LONG_NAMES = {
    "emoji": "\U0001f600" * 3000,  # 12 KB; 12 bytes each once escaped
    "accented_and_control": "\u00e9\x01\u00f1\x7f\u200b" * 1000,  # 6 bytes each
    "percent": "%" * 5000,  # 3 bytes each in the percent-encoded status text
}


@pytest.fixture(scope="module")
def stock_store(offline_server, server_repo, tmp_path_factory) -> FeatureStore:
    """A client repo with Feast's own ``type: remote`` offline store."""
    path = tmp_path_factory.mktemp("bad_input_stock").resolve()
    config = {
        "project": "flightlab_sample",
        "provider": "local",
        "registry": {"path": str(registry_of(server_repo)), "cache_ttl_seconds": 0},
        "online_store": {"type": "sqlite", "path": "data/online.db"},
        "offline_store": {"type": "remote", "host": "127.0.0.1", "port": offline_server.port},
        "entity_key_serialization_version": 3,
    }
    (path / "feature_store.yaml").write_text(yaml.safe_dump(config))
    store = FeatureStore(repo_path=str(path))
    assert isinstance(offline_store_of(store), FeastRemoteOfflineStore)
    return store


def assert_bounded(message: str) -> None:
    assert "more characters" in message
    assert len(message) <= errors.MAX_MESSAGE_CHARS + 40
    assert errors.encoded_size(message) <= errors.MAX_DETAIL_BYTES


@pytest.mark.parametrize("name", LONG_NAMES.values(), ids=LONG_NAMES.keys())
def test_a_long_value_of_any_characters_reaches_every_client_as_the_servers_error(
    name, raw_flight, flight_client, stock_store, offline_server, client_store, local_store
):
    ref = f"{name}:conv_rate"
    expected_start = f"Feature view {name[:5]}"

    with pytest.raises(flight.FlightError) as bare:
        historical(raw_flight, ref)
    assert type(bare.value) is flight.FlightServerError, repr(bare.value)
    detail = flight_error_detail(bare.value)
    assert detail["class"] == "FeatureViewNotFoundException"
    assert detail["message"].startswith(expected_start)
    assert_bounded(detail["message"])
    assert len(encode_detail(detail)) <= errors.MAX_DETAIL_BYTES
    # The stats action any caller reads bounds the text too.
    last = server_stats(offline_server)["last_error"]
    assert last["class"] == "FeatureViewNotFoundException"
    assert_bounded(last["message"])

    with pytest.raises(FeatureViewNotFoundException) as ours:
        flight_client.fetch(protocol.GetHistoricalFeatures(features=(ref,), entity_df=entities()))
    assert str(ours.value) == detail["message"]

    # Feast's stock client re-creates the class the detail names.
    with pytest.raises(Exception) as stock:
        offline_store_of(stock_store).get_historical_features(
            config=stock_store.config,
            feature_views=[],
            feature_refs=[ref],
            entity_df=entity_frame(5),
            registry=stock_store.registry,
            project=stock_store.project,
        ).to_arrow()
    assert isinstance(stock.value, FeatureViewNotFoundException), repr(stock.value)
    assert str(stock.value).startswith(expected_start)
    assert_serving_and_clean(offline_server, client_store, local_store)


def test_quoted_and_shortened_values_stay_within_their_bytes():
    for text in LONG_NAMES.values():
        assert errors.encoded_size(errors.quoted(text)) <= errors.QUOTE_BYTES
        assert errors.encoded_size(errors.shortened(text)) <= errors.MAX_DETAIL_BYTES
    # Short texts are left whole, whatever their characters.
    for short in ("plain", "\U0001f600" * 15, "\x01\x02"):
        assert errors.shortened(short) == short
        assert errors.quoted(short) == repr(short)
    cut = errors.shortened("a" * 1000)
    assert cut == "a" * errors.MAX_MESSAGE_CHARS + "... (200 more characters)"
