"""Checks of a request against the server's caps.

The caps bound what one request may make the server hold: a parameter other
than a table (a string, a list of feature references, a serialized proto) at
most ``max_param_bytes``; entity rows at most ``max_entity_rows``. Over a cap,
a request is refused with :class:`ResourceExhaustedError` naming the cap and
its command-line option, before any Feast work starts; an upload, as soon as
the batches read so far pass it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from flightlab.errors import ResourceExhaustedError
from flightlab.server.limits import ServerLimits
from flightlab.wire import protocol
from flightlab.wire.params import Kind

ENTITY_PARAM = "entity_df"


def read_staged_parameter(
    api: str,
    param: str,
    reader: Any,
    limits: ServerLimits,
    check_room: Callable[[int], None],
) -> pa.Table:
    """One uploaded parameter, read from a do_put's ``reader`` batch by batch
    and refused as soon as it passes a cap, or the room left to stage it
    (``check_room``, given the bytes so far): an oversized upload is never
    held whole."""
    batches, rows, nbytes = [], 0, 0
    table_param = _is_table_param(api, param)
    for chunk in reader:
        if chunk.data is None:
            continue  # application metadata alone: nothing to stage
        batches.append(chunk.data)
        rows, nbytes = rows + chunk.data.num_rows, nbytes + chunk.data.nbytes
        if param == ENTITY_PARAM:
            _check_entity_rows(rows, limits, so_far=True)
        elif nbytes > limits.max_param_bytes and not table_param:
            _refuse_param(param, nbytes, limits, so_far=True)
        check_room(nbytes)
    return pa.Table.from_batches(batches, schema=reader.schema)


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


def _check_entity_rows(rows: int, limits: ServerLimits, so_far: bool = False) -> None:
    if rows > limits.max_entity_rows:
        raise ResourceExhaustedError(
            f"the entity data has {'at least ' if so_far else ''}{rows} rows, over this "
            "server's cap of "
            f"{limits.max_entity_rows} entity rows per request (--max-entity-rows): "
            "split the retrieval into smaller requests"
        )


def _refuse_param(name: str, size: int, limits: ServerLimits, so_far: bool = False) -> None:
    raise ResourceExhaustedError(
        f"parameter {name!r} is {'at least ' if so_far else ''}{size} bytes, over this "
        "server's cap of "
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
