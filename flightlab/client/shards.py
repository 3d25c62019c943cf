"""A sharded training set on the server, one handle per worker.

:func:`flightlab.client.training.shards` uploads the entity rows once and gets
back one Flight endpoint per shard (``RowSelection.shards``): a :class:`Shard`
each. A shard is a small value (the client's settings, the endpoint's ticket
and the secret the server bound the command to) that pickles, so a
coordinator can hand ``shards[i]`` to worker ``i`` in another process or on
another machine, which reads it batch by batch. The server answers a shard
only when it is read, and each ticket serves once: a second epoch asks for
new shards (the server's kept results answer them without a join).

Whoever holds a shard can read it (the ticket and secret are its capability;
on a server with authentication the reader also needs the same user's
credentials, which ``config`` carries as Feast's ``auth`` settings).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight

from flightlab.client.connections import connection
from flightlab.client.errors import translated_errors
from flightlab.client.transport import read_batches


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` of a result on the server (see the module)."""

    index: int
    count: int
    config: Any = field(repr=False)  # the client's RepoConfig: where, TLS, auth
    ticket: bytes = field(repr=False)
    locations: tuple[str, ...] = ()  # the replica holding it; none: the server itself
    owner: bytes = field(default=b"", repr=False)

    def batches(self, timeout: float | None = None) -> Iterator[pa.RecordBatch]:
        """The shard's rows, batch by batch as they arrive; stopping early
        cancels the server's stream."""
        with self._reader(timeout) as reader:
            yield from read_batches(reader, None)

    def arrays(
        self, columns: Sequence[str], timeout: float | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        """The shard's ``columns`` as numpy arrays, batch by batch (see :func:`batch_arrays`)."""
        for batch in self.batches(timeout):
            yield batch_arrays(batch, columns)

    def to_arrow(self, timeout: float | None = None) -> pa.Table:
        """The whole shard (held in memory)."""
        with self._reader(timeout) as reader, translated_errors():
            return reader.read_all()

    def _reader(self, timeout: float | None) -> AbstractContextManager[flight.FlightStreamReader]:
        endpoint = flight.FlightEndpoint(self.ticket, list(self.locations))
        return connection(self.config).open_endpoint(endpoint, timeout, owner=self.owner)


def batch_arrays(batch: pa.RecordBatch, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """``columns`` of ``batch`` as numpy arrays (see :func:`as_numpy`)."""
    return {name: as_numpy(batch.column(name)) for name in columns}


def as_numpy(column: pa.Array) -> np.ndarray:
    """A column as numpy: a list column of lists all of one length (no nulls)
    as a 2-D array, anything else as ``to_numpy`` gives it."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lengths = pc.list_value_length(column)
        width = pc.min_max(lengths)
        if column.null_count == 0 and width["min"] == width["max"] and len(column):
            values = column.flatten().to_numpy(zero_copy_only=False)
            return values.reshape(len(column), width["min"].as_py())
    return column.to_numpy(zero_copy_only=False)
