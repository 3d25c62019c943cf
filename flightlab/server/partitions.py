"""A large retrieval's result in several partitions, each its own stream.

A client that reads partitions (flightlab's, with ``partitions`` set) says how
many it will read at most; a historical retrieval with entity rows enough for
more than one gets that many endpoints in its FlightInfo. Partition ``i`` of
``n`` is the ``i``-th of ``n`` contiguous, near-equal ranges of the uploaded
entity rows, answered on its own (the engine's database, or Feast's store),
so the partitions can be fetched in parallel and, concatenated in endpoint
order, hold every answer row once. Slicing an Arrow table copies nothing.

A retrieval whose row selection is sharded (``RowSelection.shards``, what
``flightlab.client.training.shards`` sends) is served in exactly that many
partitions whatever the client asks, partition ``i`` being shard ``i``: the
entity rows in the ``i``-th part of the selection's hash range. A shard
depends on the rows' values, not on their order or number, so it is the same
on any server; the workers of a training job each read one.

Every other request, and every client that does not ask (Feast's own reads
only the first endpoint), gets the whole result on one stream.
"""

from __future__ import annotations

import dataclasses

from flightlab.errors import ProtocolError
from flightlab.server.limits import ServerLimits
from flightlab.wire import protocol


def partition_count(request: protocol.Request, asked: int, limits: ServerLimits) -> int:
    """How many partitions to serve ``request`` in, for a client reading up to ``asked``."""
    shards = _shards(request)
    if shards is not None and _partitionable(request):
        return shards
    if asked <= 1 or not _partitionable(request):
        return 1
    by_rows = request.entity_df.num_rows // limits.min_partition_rows
    return max(1, min(asked, limits.max_partitions, by_rows))


def entity_range(rows: int, index: int, count: int) -> tuple[int, int]:
    """Offset and length of partition ``index`` of ``count`` over ``rows`` entity rows."""
    start = rows * index // count
    return start, rows * (index + 1) // count - start


def partition_of(request: protocol.Request, index: int, count: int) -> protocol.Request:
    """The request answering partition ``index`` of ``count`` of ``request``."""
    if count == 1:
        return request
    if not _partitionable(request):
        raise ProtocolError(f"{request.api} is not served in partitions")
    if _shards(request) == count:
        shard = request.row_selection().shard(index)
        return dataclasses.replace(request, selection=shard.to_json())
    start, length = entity_range(request.entity_df.num_rows, index, count)
    return dataclasses.replace(request, entity_df=request.entity_df.slice(start, length))


def _partitionable(request: protocol.Request) -> bool:
    return isinstance(request, protocol.GetHistoricalFeatures) and request.entity_df is not None


def _shards(request: protocol.Request) -> int | None:
    if not isinstance(request, protocol.GetHistoricalFeatures):
        return None
    selection = request.row_selection()
    return selection.shards if selection is not None else None
