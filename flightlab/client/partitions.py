"""Reading a result served in several partitions, all at once.

The server answers a large retrieval with one endpoint per partition (see
:mod:`flightlab.server.partitions`): contiguous ranges of the entity rows, in
order. :class:`PartitionedReader` opens every endpoint's stream on a thread of
its own and offers the reader interface the client reads one stream with
(``schema``, ``read_chunk``, ``read_all``, ``cancel``):

- ``ordered``: the chunks of partition 0, then those of partition 1, and so
  on, each partition read in full while earlier ones are handed out: what
  ``to_arrow()`` uses, holding the whole result anyway;
- unordered: chunks in the order they arrive, at most ``max_buffered`` of them
  held, so a streaming reader's memory stays a few batches whatever the size.

The partitions' schemas are the same where the engine answers; Feast's stores
type a column from its values (a partition whose feature column is all null
gets Arrow's null type), so the batches are cast to one schema unified from
all partitions' before any is handed out.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.flight as flight

from flightlab.wire import streaming

# Opens the stream of one endpoint (a do_get).
OpenStream = Callable[[], flight.FlightStreamReader]

_PUT_WAIT_SECONDS = 0.1


@dataclass(frozen=True)
class Chunk:
    """A batch and its application metadata, as a Flight reader's chunk."""

    data: pa.RecordBatch
    app_metadata: bytes | None = None


class PartitionedReader:
    """The partitions' streams read concurrently, as one reader (see module)."""

    def __init__(self, streams: list[OpenStream], ordered: bool, max_buffered: int = 8):
        self._count = len(streams)
        self._ordered = ordered
        self._events: queue.Queue = queue.Queue(maxsize=0 if ordered else max_buffered)
        self._stop = threading.Event()
        self._readers: list[flight.FlightStreamReader] = []
        self._readers_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._pump, args=(i, open_stream), daemon=True)
            for i, open_stream in enumerate(streams)
        ]
        for thread in self._threads:
            thread.start()
        # Events read while waiting for every partition's first chunk.
        self._early: list[tuple] = []
        self.schema, totals = self._first_chunks()
        self._chunks = self._ordered_chunks() if ordered else self._arrival_chunks()
        self._first_metadata: bytes | None = streaming.totals_metadata(*totals)

    # --- the reader interface --------------------------------------------------

    def read_chunk(self) -> Chunk:
        """The next chunk; StopIteration after the last one."""
        chunk = next(self._chunks)
        if self._first_metadata is not None:  # the whole result's totals go first
            chunk = Chunk(chunk.data, self._first_metadata)
            self._first_metadata = None
        return chunk

    def read_all(self) -> pa.Table:
        batches = []
        while True:
            try:
                batches.append(self.read_chunk().data)
            except StopIteration:
                return pa.Table.from_batches(batches, schema=self.schema)

    def cancel(self) -> None:
        """Stop every stream (at once: the server ends each at a batch)."""
        self._stop.set()
        with self._readers_lock:
            for reader in self._readers:
                reader.cancel()
        while True:  # wakes any thread waiting to hand over a chunk
            try:
                self._events.get_nowait()
            except queue.Empty:
                break

    # --- the threads -------------------------------------------------------------

    def _pump(self, index: int, open_stream: OpenStream) -> None:
        try:
            reader = open_stream()
            with self._readers_lock:
                self._readers.append(reader)
                if self._stop.is_set():
                    reader.cancel()
            self._put(("schema", index, reader.schema))
            while not self._stop.is_set():
                try:
                    chunk = reader.read_chunk()
                except StopIteration:
                    break
                self._put(("chunk", index, Chunk(chunk.data, _bytes(chunk.app_metadata))))
            self._put(("end", index, None))
        except BaseException as exc:  # handed to the reading thread, which raises it
            self._put(("error", index, exc))

    def _put(self, event: tuple) -> None:
        while not self._stop.is_set():
            try:
                self._events.put(event, timeout=_PUT_WAIT_SECONDS)
                return
            except queue.Full:
                continue

    def _next_event(self) -> tuple:
        kind, index, value = self._events.get()
        if kind == "error":
            self.cancel()
            raise value
        return kind, index, value

    # --- handing out -------------------------------------------------------------

    def _first_chunks(self) -> tuple[pa.Schema, tuple[int | None, int | None]]:
        """Every partition's schema and first chunk (or end): the unified
        schema, and the whole result's totals where every partition told its own."""
        schemas: dict[int, pa.Schema] = {}
        totals: dict[int, tuple[int | None, int | None]] = {}
        while len(totals) < self._count:
            kind, index, value = self._next_event()
            if kind == "schema":
                schemas[index] = value
                continue
            if index not in totals:
                first = value.app_metadata if kind == "chunk" else None
                totals[index] = streaming.parse_totals(first)
            self._early.append((kind, index, value))
        schema = _unified([schemas[i] for i in range(self._count)])
        return schema, _summed(list(totals.values()))

    def _events_after_first(self) -> Iterator[tuple]:
        early, self._early = self._early, []
        ended = 0
        for event in early:
            ended += event[0] == "end"
            yield event
        while ended < self._count:
            event = self._next_event()
            ended += event[0] == "end"
            yield event

    def _arrival_chunks(self) -> Iterator[Chunk]:
        for kind, _, value in self._events_after_first():
            if kind == "chunk":
                yield self._cast(value)

    def _ordered_chunks(self) -> Iterator[Chunk]:
        held: list[list[Chunk]] = [[] for _ in range(self._count)]
        done = [False] * self._count
        current = 0
        for kind, index, value in self._events_after_first():
            if kind == "chunk":
                held[index].append(self._cast(value))
            else:
                done[index] = True
            while current < self._count:
                yield from held[current]
                held[current] = []
                if not done[current]:
                    break
                current += 1

    def _cast(self, chunk: Chunk) -> Chunk:
        if chunk.data.schema.equals(self.schema):
            return chunk
        return Chunk(chunk.data.cast(self.schema), chunk.app_metadata)


def _unified(schemas: list[pa.Schema]) -> pa.Schema:
    first = schemas[0]
    if all(schema.equals(first) for schema in schemas):
        return first
    return pa.unify_schemas(schemas, promote_options="permissive")


def _summed(totals: list[tuple[int | None, int | None]]) -> tuple[int | None, int | None]:
    rows = [r for r, _ in totals]
    nbytes = [b for _, b in totals]
    return (
        None if None in rows else sum(rows),
        None if None in nbytes else sum(nbytes),
    )


def _bytes(metadata: pa.Buffer | None) -> bytes | None:
    return None if metadata is None else metadata.to_pybytes()
