"""Checks of a request against the server's caps.

The caps bound what one request may make the server hold: a parameter other
than a table (a string, a list of feature references, a serialized proto) at
most ``max_param_bytes``; entity rows at most ``max_entity_rows``. Over a cap,
a request is refused with :class:`ResourceExhaustedError` naming the cap and
its command-line option, before any Feast work starts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pyarrow as pa

from flightlab.errors import ResourceExhaustedError
from flightlab.server.limits import ServerLimits
from flightlab.wire import protocol
from flightlab.wire.params import Kind

ENTITY_PARAM = "entity_df"


def check_staged_parameter(api: str, param: str, table: pa.Table, limits: ServerLimits) -> None:
    """Refuse one uploaded parameter over a cap (before it is staged)."""
    if param == ENTITY_PARAM:
        _check_entity_rows(table.num_rows, limits)
    elif table.nbytes > limits.max_param_bytes and not _is_table_param(api, param):
        _refuse_param(param, table.nbytes, limits)


def check_request(request: protocol.Request, limits: ServerLimits) -> None:
    """Refuse a decoded request over a cap (whichever protocol it came by)."""
    if isinstance(request, protocol.Persist):
        check_request(request.retrieval, limits)
    entity_df = getattr(request, ENTITY_PARAM, None)
    if isinstance(entity_df, pa.Table):
        _check_entity_rows(entity_df.num_rows, limits)
    for field in dataclasses.fields(request):
        kind = field.metadata.get("kind")
        if kind is None or kind is Kind.TABLE:
            continue
        size = _value_bytes(getattr(request, field.name))
        if size > limits.max_param_bytes:
            _refuse_param(field.name, size, limits)


def _check_entity_rows(rows: int, limits: ServerLimits) -> None:
    if rows > limits.max_entity_rows:
        raise ResourceExhaustedError(
            f"the entity data has {rows} rows, over this server's cap of "
            f"{limits.max_entity_rows} entity rows per request (--max-entity-rows): "
            "split the retrieval into smaller requests"
        )


def _refuse_param(name: str, size: int, limits: ServerLimits) -> None:
    raise ResourceExhaustedError(
        f"parameter {name!r} is {size} bytes, over this server's cap of "
        f"{limits.max_param_bytes} bytes per parameter (--max-param-bytes)"
    )


def _is_table_param(api: str, param: str) -> bool:
    try:
        request_type = protocol.api_type(api)
    except Exception:
        return False  # an unknown API is refused by the decoder, with its own error
    kinds = {f.name: f.metadata.get("kind") for f in dataclasses.fields(request_type)}
    if request_type is protocol.Persist:
        return param in ("entity_df",)
    return kinds.get(param) is Kind.TABLE


def _value_bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, tuple):
        return sum(_value_bytes(v) for v in value)
    return 0
