"""The flightlab wire protocol: commands, parameters, tickets and metadata.

Everything that decides what bytes travel lives here, and nothing here knows
Feast. A client turns a request into parameter tables with
:func:`encode_request`; the server turns staged parameter tables back into the
same frozen request with :func:`decode_request`, which is where malformed input
is caught and named. ``docs/protocol.md`` describes the protocol for people.

A call is a *command*, named by a UUID the client makes:

1. one ``do_put`` per parameter, on ``FlightDescriptor.for_command(command_id)``,
   whose schema metadata carries ``command``, ``api`` and ``param``;
2. for an API that returns data: ``get_flight_info`` on the same descriptor,
   then ``do_get`` on the ticket of its first endpoint;
   for an API that returns none: ``do_action(api, body=command_id)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Union

import pyarrow as pa

from flightlab.errors import quoted

# What the wire raises is raised in its Flight form (flightlab.wire.flight_errors):
# a client building a bad request gets the error a server would send.
from flightlab.wire.flight_errors import (
    MalformedParameterError,
    MissingParameterError,
    UnknownApiError,
    UnknownParameterError,
)
from flightlab.wire.params import Kind, decode_text, decode_value, encode_value, param
from flightlab.wire.selection import RowSelection

# Commands and tickets are part of the protocol: protocol.command_descriptor(...) etc.
from flightlab.wire.tickets import (  # noqa: F401
    PartitionTicket,
    command_descriptor,
    command_id_from_descriptor,
    command_id_from_ticket,
    new_command_id,
    ticket_bytes,
)

# Schema metadata keys of every do_put.
META_COMMAND = b"command"
META_API = b"api"
META_PARAM = b"param"
PROTOCOL_METADATA_KEYS = (META_COMMAND, META_API, META_PARAM)


@dataclass(frozen=True)
class Request:
    """A decoded call of one offline-store API."""

    api: ClassVar[str]
    returns_data: ClassVar[bool]

    def table_params(self) -> dict[str, pa.Table]:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("kind") is Kind.TABLE and getattr(self, f.name) is not None
        }

    def rows_in(self) -> int:
        return sum(t.num_rows for t in self.table_params().values())


@dataclass(frozen=True)
class GetHistoricalFeatures(Request):
    api: ClassVar[str] = "get_historical_features"
    returns_data: ClassVar[bool] = True

    features: tuple[str, ...] = param(Kind.STRING_LIST)
    entity_df: pa.Table | None = param(Kind.TABLE, required=False)
    entity_df_sql: str | None = param(Kind.STRING, required=False)
    full_feature_names: bool = param(Kind.BOOL, required=False, default=False)
    start_date: datetime | None = param(Kind.TIMESTAMP, required=False)
    end_date: datetime | None = param(Kind.TIMESTAMP, required=False)
    # The feature view projections the client's Feast resolved the references
    # with (serialized FeatureViewProjection protos): they carry what the
    # references cannot, a feature service's aliases and join key maps.
    projections: tuple[bytes, ...] | None = param(Kind.BYTES_LIST, required=False)
    # False: answer afresh, neither reading nor filling the server's kept
    # results (flightlab.dispatch.reuse). Unset (None) is the default, reuse.
    reuse: bool | None = param(Kind.BOOL, required=False)
    # Which entity rows to answer, and in what order (a RowSelection as JSON).
    selection: str | None = param(Kind.STRING, required=False)

    def row_selection(self) -> RowSelection | None:
        return None if self.selection is None else RowSelection.from_json(self.selection)

    def __post_init__(self) -> None:
        self.row_selection()  # a malformed selection fails here, named
        if not self.features:
            raise MalformedParameterError("'features' must name at least one feature")
        for ref in self.features:
            view, sep, name = ref.partition(":")
            if not (sep and view and name):
                raise MalformedParameterError(
                    f"malformed feature reference {quoted(ref)}: expected 'feature_view:feature'"
                )
        if self.entity_df is not None and self.entity_df_sql is not None:
            raise MalformedParameterError("send 'entity_df' or 'entity_df_sql', not both")
        has_entities = self.entity_df is not None or self.entity_df_sql is not None
        if has_entities and (self.start_date or self.end_date):
            raise MalformedParameterError(
                "'start_date'/'end_date' go with a retrieval without entity data"
            )


@dataclass(frozen=True)
class PullLatestFromTableOrQuery(Request):
    api: ClassVar[str] = "pull_latest_from_table_or_query"
    returns_data: ClassVar[bool] = True

    data_source_name: str = param(Kind.STRING)
    join_key_columns: tuple[str, ...] = param(Kind.STRING_LIST)
    feature_name_columns: tuple[str, ...] = param(Kind.STRING_LIST)
    timestamp_field: str = param(Kind.STRING)
    start_date: datetime = param(Kind.TIMESTAMP)
    end_date: datetime = param(Kind.TIMESTAMP)
    created_timestamp_column: str | None = param(Kind.STRING, required=False)
    # The source itself (a serialized Feast DataSource proto), for one the
    # registry does not list, such as a saved dataset's storage.
    data_source: bytes | None = param(Kind.BYTES, required=False)
    # False: answer afresh, neither reading nor filling the server's kept
    # results (flightlab.dispatch.reuse). Unset (None) is the default, reuse.
    reuse: bool | None = param(Kind.BOOL, required=False)


@dataclass(frozen=True)
class PullAllFromTableOrQuery(Request):
    api: ClassVar[str] = "pull_all_from_table_or_query"
    returns_data: ClassVar[bool] = True

    data_source_name: str = param(Kind.STRING)
    join_key_columns: tuple[str, ...] = param(Kind.STRING_LIST)
    feature_name_columns: tuple[str, ...] = param(Kind.STRING_LIST)
    timestamp_field: str = param(Kind.STRING)
    created_timestamp_column: str | None = param(Kind.STRING, required=False)
    start_date: datetime | None = param(Kind.TIMESTAMP, required=False)
    end_date: datetime | None = param(Kind.TIMESTAMP, required=False)
    # The source itself (a serialized Feast DataSource proto), for one the
    # registry does not list, such as a saved dataset's storage.
    data_source: bytes | None = param(Kind.BYTES, required=False)
    # False: answer afresh, neither reading nor filling the server's kept
    # results (flightlab.dispatch.reuse). Unset (None) is the default, reuse.
    reuse: bool | None = param(Kind.BOOL, required=False)


@dataclass(frozen=True)
class GetTableColumnNamesAndTypes(Request):
    api: ClassVar[str] = "get_table_column_names_and_types_from_data_source"
    returns_data: ClassVar[bool] = True

    data_source: bytes = param(Kind.BYTES)  # a serialized Feast DataSource proto


@dataclass(frozen=True)
class OfflineWriteBatch(Request):
    api: ClassVar[str] = "offline_write_batch"
    returns_data: ClassVar[bool] = False

    feature_view_name: str = param(Kind.STRING)
    table: pa.Table = param(Kind.TABLE)


@dataclass(frozen=True)
class WriteLoggedFeatures(Request):
    api: ClassVar[str] = "write_logged_features"
    returns_data: ClassVar[bool] = False

    feature_service_name: str = param(Kind.STRING)
    data: pa.Table = param(Kind.TABLE)


@dataclass(frozen=True)
class ValidateDataSource(Request):
    api: ClassVar[str] = "validate_data_source"
    returns_data: ClassVar[bool] = False

    data_source: bytes = param(Kind.BYTES)  # a serialized Feast DataSource proto


PullRequest = Union[PullLatestFromTableOrQuery, PullAllFromTableOrQuery]
RetrievalRequest = Union[GetHistoricalFeatures, PullLatestFromTableOrQuery, PullAllFromTableOrQuery]


@dataclass(frozen=True)
class Persist(Request):
    """Run a retrieval and save its result on the server.

    On the wire: the retrieval's own parameters, plus ``retrieval_api`` naming
    it, the destination — ``storage`` (a serialized Feast SavedDatasetStorage
    proto) or ``destination_name`` (a data source in the server's registry) —
    and ``allow_overwrite``.
    """

    api: ClassVar[str] = "persist"
    returns_data: ClassVar[bool] = False

    retrieval: RetrievalRequest = field(metadata={"kind": None})
    storage: bytes | None = param(Kind.BYTES, required=False)
    destination_name: str | None = param(Kind.STRING, required=False)
    allow_overwrite: bool = param(Kind.BOOL, required=False, default=False)

    def __post_init__(self) -> None:
        if (self.storage is None) == (self.destination_name is None):
            raise MissingParameterError(
                "persist needs exactly one destination: 'storage' or 'destination_name'"
            )

    def table_params(self) -> dict[str, pa.Table]:
        return self.retrieval.table_params()


@dataclass(frozen=True)
class ExportRetrieval(Request):
    """Run a retrieval and write its result as parquet files under the
    server's export location; the summary names the files.

    On the wire: the retrieval's own parameters, plus ``retrieval_api``.
    """

    api: ClassVar[str] = "export_retrieval"
    returns_data: ClassVar[bool] = False

    retrieval: RetrievalRequest = field(metadata={"kind": None})

    def table_params(self) -> dict[str, pa.Table]:
        return self.retrieval.table_params()


READ_REQUESTS: tuple[type[Request], ...] = (
    GetHistoricalFeatures,
    PullLatestFromTableOrQuery,
    PullAllFromTableOrQuery,
    GetTableColumnNamesAndTypes,
)
ACTION_REQUESTS: tuple[type[Request], ...] = (
    OfflineWriteBatch,
    WriteLoggedFeatures,
    Persist,
    ValidateDataSource,
    ExportRetrieval,
)
REQUEST_TYPES: dict[str, type[Request]] = {cls.api: cls for cls in READ_REQUESTS + ACTION_REQUESTS}
RETRIEVAL_REQUESTS: tuple[type[Request], ...] = (
    GetHistoricalFeatures,
    PullLatestFromTableOrQuery,
    PullAllFromTableOrQuery,
)
RETRIEVAL_TYPES: dict[str, type[Request]] = {cls.api: cls for cls in RETRIEVAL_REQUESTS}
# Requests that carry a retrieval (Persist, ExportRetrieval) send its parameters
# beside their own, and this one naming its API.
RETRIEVAL_API_PARAM = "retrieval_api"


def api_type(api: str) -> type[Request]:
    try:
        return REQUEST_TYPES[api]
    except KeyError:
        raise UnknownApiError(
            f"unknown API {quoted(api)}; this server offers: {', '.join(sorted(REQUEST_TYPES))}"
        ) from None


# --- do_put metadata ---------------------------------------------------------


@dataclass(frozen=True)
class PutHeader:
    """What a do_put's schema metadata says about the table it carries."""

    command_id: str
    api: str
    param: str


def put_metadata(command_id: str, api: str, param_name: str) -> dict[bytes, bytes]:
    return {
        META_COMMAND: command_id.encode(),
        META_API: api.encode(),
        META_PARAM: param_name.encode(),
    }


def read_put_header(schema: pa.Schema, descriptor_command_id: str | None) -> PutHeader:
    """Validate a do_put's metadata against the protocol and its descriptor."""
    metadata = schema.metadata or {}
    values = {}
    for key in PROTOCOL_METADATA_KEYS:
        if key not in metadata:
            raise MissingParameterError(
                f"do_put schema metadata lacks {key.decode()!r}; "
                "every do_put carries 'command', 'api' and 'param'"
            )
        values[key.decode()] = decode_text(metadata[key], f"metadata {key.decode()!r}")
    header = PutHeader(values["command"], values["api"], values["param"])
    if descriptor_command_id is not None and descriptor_command_id != header.command_id:
        raise MalformedParameterError(
            f"do_put metadata names command {quoted(header.command_id)} "
            f"but its descriptor names {quoted(descriptor_command_id)}"
        )
    cls = api_type(header.api)
    if header.param not in wire_param_names(cls):
        raise UnknownParameterError(
            f"{header.api} has no parameter {quoted(header.param)}; "
            f"it takes: {', '.join(wire_param_names(cls))}"
        )
    return header


def strip_protocol_metadata(table: pa.Table) -> pa.Table:
    metadata = {
        k: v for k, v in (table.schema.metadata or {}).items() if k not in PROTOCOL_METADATA_KEYS
    }
    return table.replace_schema_metadata(metadata or None)


# --- parameter encoding ------------------------------------------------------


def _wire_fields(cls: type[Request]) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("kind") is not None]


def _wraps_retrieval(cls: type[Request]) -> bool:
    return any(f.name == "retrieval" for f in dataclasses.fields(cls))


def wire_param_names(cls: type[Request]) -> tuple[str, ...]:
    names = [f.name for f in _wire_fields(cls)]
    if _wraps_retrieval(cls):
        retrieval_names = {n for r in RETRIEVAL_TYPES.values() for n in wire_param_names(r)}
        names = [RETRIEVAL_API_PARAM, *names, *sorted(retrieval_names)]
    return tuple(names)


def encode_request(request: Request) -> dict[str, pa.Table | pa.RecordBatchReader]:
    """The parameter tables, by name, that carry ``request``."""
    params = {}
    if _wraps_retrieval(type(request)):
        params = encode_request(request.retrieval)
        api = request.retrieval.api
        params[RETRIEVAL_API_PARAM] = encode_value(RETRIEVAL_API_PARAM, Kind.STRING, api)
    for f in _wire_fields(type(request)):
        value = getattr(request, f.name)
        if value is None:
            continue  # an absent optional parameter is simply not sent
        params[f.name] = encode_value(f.name, f.metadata["kind"], value)
    return params


def decode_request(api: str, params: Mapping[str, pa.Table]) -> Request:
    """The request that staged parameter tables describe, validated."""
    cls = api_type(api)
    retrieval = _decode_retrieval(cls, params) if _wraps_retrieval(cls) else None
    if retrieval is not None:
        params = {k: v for k, v in params.items() if k in {f.name for f in _wire_fields(cls)}}
    unknown = set(params) - set(wire_param_names(cls))
    if unknown:
        raise UnknownParameterError(f"{api} has no parameter(s) {sorted(unknown)}")
    values = {} if retrieval is None else {"retrieval": retrieval}
    for f in _wire_fields(cls):
        if f.name in params:
            values[f.name] = decode_value(f.name, f.metadata["kind"], params[f.name])
        elif f.metadata["required"]:
            raise MissingParameterError(f"{api} needs the parameter {f.name!r}")
    try:
        return cls(**values)
    except TypeError as exc:  # a value of the wrong Python type
        raise MalformedParameterError(f"{api}: {exc}") from None


def _decode_retrieval(cls: type[Request], params: Mapping[str, pa.Table]) -> Request:
    """The retrieval a Persist or ExportRetrieval carries."""
    if RETRIEVAL_API_PARAM not in params:
        raise MissingParameterError(f"{cls.api} needs the parameter {RETRIEVAL_API_PARAM!r}")
    retrieval_api = decode_value(RETRIEVAL_API_PARAM, Kind.STRING, params[RETRIEVAL_API_PARAM])
    if retrieval_api not in RETRIEVAL_TYPES:
        verb = "save" if cls is Persist else "export"
        raise MalformedParameterError(
            f"{cls.api} cannot {verb} the result of {quoted(retrieval_api)}; "
            f"it takes one of: {', '.join(RETRIEVAL_TYPES)}"
        )
    own = {RETRIEVAL_API_PARAM, *(f.name for f in _wire_fields(cls))}
    retrieval_params = {k: v for k, v in params.items() if k not in own}
    return decode_request(retrieval_api, retrieval_params)
