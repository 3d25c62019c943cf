"""The wire protocol of Feast's own offline server, decoded into flightlab requests.

Feast's stock ``type: remote`` client puts the whole call in the descriptor: a
``FlightDescriptor.for_command(json.dumps({"command_id", "api", ...params}))``.
The one table it uploads is the entity rows or the table to write, or a dummy
one-column ``key`` table when the call has none. It sends

- reads (feast 0.67): ``do_exchange`` on that descriptor — upload, then read;
- reads (older feast): ``do_put``, ``get_flight_info``, ``do_get``;
- writes: ``do_put``, which runs the call at once.

This module turns such a descriptor and table into the same frozen requests
as :mod:`flightlab.wire.protocol`, so one dispatcher serves both protocols. Errors
go back as ``Flight error: {"module", "class", "message"}``, which the stock
client turns into Feast's own exception classes (see ``server.to_flight_error``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from flightlab.errors import quoted
from flightlab.wire import protocol
from flightlab.wire.flight_errors import MalformedParameterError, MissingParameterError


@dataclass(frozen=True)
class FeastCommand:
    """A decoded Feast descriptor: the call's id, API and JSON parameters."""

    command_id: str
    api: str
    params: dict[str, Any]

    @property
    def returns_data(self) -> bool:
        return protocol.api_type(self.api).returns_data


def parse_descriptor(descriptor: Any) -> FeastCommand | None:
    """The Feast command a descriptor carries, or None if it is not one."""
    raw = getattr(descriptor, "command", None)
    if not raw or not raw.lstrip().startswith(b"{"):
        return None
    try:
        document = json.loads(raw)
    except ValueError:
        raise MalformedParameterError("the flight descriptor holds malformed JSON") from None
    if not isinstance(document, dict) or "api" not in document:
        raise MissingParameterError("the descriptor's JSON command names no 'api'")
    protocol.api_type(document["api"])  # an unknown API fails here, by name
    command_id = str(document.get("command_id") or protocol.new_command_id())
    params = {k: v for k, v in document.items() if k not in ("command_id", "api")}
    return FeastCommand(command_id=command_id, api=document["api"], params=params)


_PLACEHOLDER_TEXT = "mock_key"


def is_placeholder_table(table: pa.Table | None) -> bool:
    """Feast uploads a one-column ``key`` table when a call has no table.

    Feast builds it with ``pa.Table.from_pydict({"key": "mock_key"})``, which
    splits the string into one row per character: eight rows, not one.
    """
    if table is None:
        return True
    if table.column_names != ["key"] or not pa.types.is_string(table.schema.field("key").type):
        return False
    values = table.column("key").to_pylist()
    return len(values) <= 1 or "".join(v or "" for v in values) == _PLACEHOLDER_TEXT


def to_request(command: FeastCommand, table: pa.Table | None) -> protocol.Request:
    """The flightlab request a Feast command and its uploaded table describe."""
    table = None if is_placeholder_table(table) else table
    params = command.params
    api = command.api
    try:
        if api == protocol.Persist.api:
            return _persist(params, table)
        return _DECODERS[api](params, table)
    except KeyError as exc:
        raise MissingParameterError(f"{api} needs the parameter {exc.args[0]!r}") from None


def _historical(params: dict[str, Any], table: pa.Table | None) -> protocol.GetHistoricalFeatures:
    return protocol.GetHistoricalFeatures(
        features=_strings(params, "feature_refs"),
        entity_df=table,
        entity_df_sql=params.get("entity_df_sql") if table is None else None,
        full_feature_names=bool(params.get("full_feature_names", False)),
        start_date=_date(params, "start_date"),
        end_date=_date(params, "end_date"),
    )


def _pull_fields(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "data_source_name": _string(params, "data_source_name"),
        "join_key_columns": _strings(params, "join_key_columns"),
        "feature_name_columns": _strings(params, "feature_name_columns"),
        "timestamp_field": _string(params, "timestamp_field"),
        "created_timestamp_column": params.get("created_timestamp_column") or None,
        "start_date": _date(params, "start_date"),
        "end_date": _date(params, "end_date"),
    }


def _pull_latest(params: dict[str, Any], _table: pa.Table | None) -> protocol.Request:
    fields = _pull_fields(params)
    for name in ("start_date", "end_date"):
        if fields[name] is None:
            raise MissingParameterError(f"pull_latest_from_table_or_query needs {name!r}")
    return protocol.PullLatestFromTableOrQuery(**fields)


def _pull_all(params: dict[str, Any], _table: pa.Table | None) -> protocol.Request:
    return protocol.PullAllFromTableOrQuery(**_pull_fields(params))


def _offline_write_batch(params: dict[str, Any], table: pa.Table | None) -> protocol.Request:
    names = _strings(params, "feature_view_names")
    if len(names) != 1:
        raise MalformedParameterError("offline_write_batch writes to exactly one feature view")
    return protocol.OfflineWriteBatch(
        feature_view_name=names[0], table=_required_table(table, "table")
    )


def _write_logged_features(params: dict[str, Any], table: pa.Table | None) -> protocol.Request:
    return protocol.WriteLoggedFeatures(
        feature_service_name=_string(params, "feature_service_name"),
        data=_required_table(table, "data"),
    )


def _data_source_request(cls: type[protocol.Request]):
    def decode(params: dict[str, Any], _table: pa.Table | None) -> protocol.Request:
        return cls(data_source=_data_source_bytes(_string(params, "data_source_proto")))

    return decode


def _persist(params: dict[str, Any], table: pa.Table | None) -> protocol.Persist:
    retrieval_api = _string(params, "retrieve_func")
    if retrieval_api not in protocol.RETRIEVAL_TYPES:
        raise MalformedParameterError(f"persist cannot save the result of {quoted(retrieval_api)}")
    if retrieval_api != protocol.GetHistoricalFeatures.api:
        # Feast's client sends one 'data_source_name' that is both the pull's
        # source and the destination: saving would overwrite the source.
        raise MalformedParameterError(
            f"persist of {retrieval_api} is ambiguous in Feast's protocol (one "
            "'data_source_name' names both the source and the destination); "
            "use flightlab's client, which sends the destination separately"
        )
    return protocol.Persist(
        retrieval=_historical(params, table),
        destination_name=_string(params, "data_source_name"),
        allow_overwrite=bool(params.get("allow_overwrite", False)),
    )


_DECODERS = {
    protocol.GetHistoricalFeatures.api: _historical,
    protocol.PullLatestFromTableOrQuery.api: _pull_latest,
    protocol.PullAllFromTableOrQuery.api: _pull_all,
    protocol.OfflineWriteBatch.api: _offline_write_batch,
    protocol.WriteLoggedFeatures.api: _write_logged_features,
    protocol.ValidateDataSource.api: _data_source_request(protocol.ValidateDataSource),
    protocol.GetTableColumnNamesAndTypes.api: _data_source_request(
        protocol.GetTableColumnNamesAndTypes
    ),
}


# --- value checks --------------------------------------------------------------


def _string(params: dict[str, Any], name: str) -> str:
    value = params[name]
    if not isinstance(value, str) or not value:
        raise MalformedParameterError(f"parameter {name!r} must be a non-empty string")
    return value


def _strings(params: dict[str, Any], name: str) -> tuple[str, ...]:
    value = params[name]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedParameterError(f"parameter {name!r} must be a list of strings")
    return tuple(value)


def _date(params: dict[str, Any], name: str) -> datetime | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise MalformedParameterError(
            f"parameter {name!r} must be an ISO 8601 timestamp, got {quoted(value)}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _required_table(table: pa.Table | None, name: str) -> pa.Table:
    if table is None:
        raise MissingParameterError(f"the call uploads no {name!r} table")
    return table


def _data_source_bytes(json_text: str) -> bytes:
    """Feast sends a DataSource as protobuf JSON; flightlab carries it binary."""
    from feast.protos.feast.core.DataSource_pb2 import DataSource as DataSourceProto
    from google.protobuf.json_format import Parse, ParseError

    try:
        return Parse(json_text, DataSourceProto()).SerializeToString()
    except ParseError as exc:
        raise MalformedParameterError(f"'data_source_proto' is not a DataSource: {exc}") from None
