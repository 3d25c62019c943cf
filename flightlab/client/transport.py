"""The client half of the flightlab protocol: send a request, get its answer.

:class:`OfflineFlightClient` knows Flight and the protocol, not Feast: it takes
the requests of :mod:`flightlab.wire.protocol` and returns Arrow data. Flight errors
are turned back into the exceptions the server described
(:mod:`flightlab.client.errors`).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from flightlab.client.errors import exception_for_flight_error, translated_errors
from flightlab.client.partitions import PartitionedReader
from flightlab.errors import (
    UnknownApiError,
)
from flightlab.wire import protocol, streaming, version
from flightlab.wire.actions import ACTION_DROP, ACTION_PROTOCOL_VERSION, ACTION_STATS
from flightlab.wire.headers import (
    COMPRESSION_HEADER,
    OWNER_HEADER,
    PARTITIONS_HEADER,
    PROTOCOL_HEADER,
)
from flightlab.wire.manifest import params_metadata

DEFAULT_UPLOAD_BATCH_ROWS = 65_536
DEFAULT_UPLOAD_BATCH_BYTES = 8 * 1024**2


class OfflineFlightClient:
    """A connection to a flightlab server.

    ``protocol`` is the protocol version this client speaks and
    ``min_server_protocol`` the oldest server version it works with (see
    :mod:`flightlab.wire.version`).

    ``timeout`` (seconds) bounds every call; ``None`` waits as long as it takes.
    ``compression`` ("zstd" or "lz4") compresses uploads and asks the server to
    compress results. Uploads go in batches within the two ``upload_batch_*``
    bounds, so no single message nears gRPC's 2 GiB limit. ``owner`` is the
    secret the server binds this client's commands to (random by default);
    clients given the same one share their commands. ``partitions`` above 1
    asks the server to split a large retrieval into up to that many streams,
    read concurrently (:mod:`flightlab.client.partitions`).
    """

    protocol = version.PROTOCOL_VERSION
    min_server_protocol = version.MIN_SERVER_PROTOCOL

    def __init__(
        self,
        location: str,
        *,
        timeout: float | None = None,
        compression: str | None = None,
        upload_batch_rows: int = DEFAULT_UPLOAD_BATCH_ROWS,
        upload_batch_bytes: int = DEFAULT_UPLOAD_BATCH_BYTES,
        owner: str | None = None,
        partitions: int = 1,
        **client_kwargs: Any,
    ):
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, not {partitions}")
        self.location = location
        self.partitions = partitions
        self.timeout = timeout
        self.compression = compression
        self.upload_batch_rows = upload_batch_rows
        self.upload_batch_bytes = upload_batch_bytes
        self._client_kwargs = client_kwargs
        self._client = flight.FlightClient(location, **client_kwargs)
        # Clients of the replicas that FlightInfo endpoints named, by location.
        self._replicas: dict[str, flight.FlightClient] = {}
        self._lock = threading.Lock()  # one client serves many threads
        self.server_protocol: int | None = None  # known after the first call
        self._server_answer: dict[str, Any] = {}
        # The secret this client's commands are bound to: random unless given.
        self._owner = (owner or secrets.token_urlsafe(24)).encode()

    def close(self) -> None:
        self._client.close()
        with self._lock:
            replicas, self._replicas = list(self._replicas.values()), {}
        for client in replicas:
            client.close()

    def __enter__(self) -> OfflineFlightClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # --- calls ---------------------------------------------------------------

    def fetch(
        self,
        request: protocol.Request,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> pa.Table:
        """Run an API that returns data and read the whole result."""
        with self.open_reader(request, timeout) as reader:
            if progress is None:
                with translated_errors():
                    return reader.read_all()
            batches = list(read_batches(reader, progress))
            return pa.Table.from_batches(batches, schema=reader.schema)

    def iter_batches(
        self,
        request: protocol.Request,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Run an API that returns data; yield its record batches as they arrive.

        Closing the generator early cancels the stream on the server.
        """
        with self.open_reader(request, timeout, ordered=False) as reader:
            yield from read_batches(reader, progress)

    @contextmanager
    def open_reader(
        self, request: protocol.Request, timeout: float | None = None, ordered: bool = True
    ) -> Iterator[flight.FlightStreamReader | PartitionedReader]:
        """Run an API that returns data; yield a reader over its record batches.

        A result served in partitions is read from all of them at once: with
        ``ordered``, partition by partition (the rows in the order of the entity
        rows' ranges); otherwise as the batches arrive, a few held at most.
        """
        endpoints = self.endpoints(request, timeout)
        if len(endpoints) == 1:
            with self.open_endpoint(endpoints[0], timeout) as reader:
                yield reader
            return
        with translated_errors():
            reader = PartitionedReader(self._streams(endpoints, self._options(timeout)), ordered)
        try:
            yield reader
        finally:
            reader.cancel()

    def endpoints(
        self, request: protocol.Request, timeout: float | None = None, owner: bytes | None = None
    ) -> list[flight.FlightEndpoint]:
        """Stage ``request`` (a call that returns data) and ask where its result
        is served: one endpoint, or one per partition or shard. ``owner``: the
        secret the command is bound to, instead of this client's."""
        if not request.returns_data:
            raise ValueError(f"{request.api} returns no data: use run_action")
        command_id = self.stage(request, self._options(timeout, owner=owner))
        with translated_errors():
            descriptor = protocol.command_descriptor(command_id)
            options = self._options(timeout, partitions=True, owner=owner)
            return self._client.get_flight_info(descriptor, options).endpoints

    @contextmanager
    def open_endpoint(
        self,
        endpoint: flight.FlightEndpoint,
        timeout: float | None = None,
        owner: bytes | None = None,
    ) -> Iterator[flight.FlightStreamReader]:
        """One endpoint's stream (its ticket serves once), cancelled on leaving:
        a client that stops early stops the server's stream."""
        options = self._options(timeout, owner=owner)
        with translated_errors():
            reader = self._client_for(endpoint).do_get(endpoint.ticket, options)
        try:
            yield reader
        finally:
            reader.cancel()

    def _streams(
        self, endpoints: list[flight.FlightEndpoint], options: flight.FlightCallOptions
    ) -> list[Callable[[], flight.FlightStreamReader]]:
        clients = [self._client_for(endpoint) for endpoint in endpoints]
        return [
            partial(client.do_get, endpoint.ticket, options)
            for client, endpoint in zip(clients, endpoints, strict=True)
        ]

    def _client_for(self, endpoint: flight.FlightEndpoint) -> flight.FlightClient:
        """Who serves ``endpoint``: the replica it names (behind a load balancer,
        the one holding the command), or this connection when it names none."""
        if not endpoint.locations:
            return self._client
        uri = endpoint.locations[0].uri.decode()
        if uri == self.location or uri.startswith("arrow-flight-reuse-connection:"):
            return self._client
        with self._lock:
            if uri not in self._replicas:
                self._replicas[uri] = flight.FlightClient(uri, **self._client_kwargs)
            return self._replicas[uri]

    def run_action(self, request: protocol.Request, timeout: float | None = None) -> dict[str, Any]:
        """Run an API that returns no data; return the server's summary."""
        if request.returns_data:
            raise ValueError(f"{request.api} returns data: use fetch")
        options = self._options(timeout)
        command_id = self.stage(request, options)
        action = flight.Action(request.api, protocol.ticket_bytes(command_id))
        with translated_errors():
            results = list(self._client.do_action(action, options))
        return json.loads(results[0].body.to_pybytes()) if results else {}

    def stage(
        self, request: protocol.Request, options: flight.FlightCallOptions | None = None
    ) -> str:
        """Send every parameter of ``request``; return the new command id."""
        self.check_protocol()
        command_id = protocol.new_command_id()
        descriptor = protocol.command_descriptor(command_id)
        params = protocol.encode_request(request)
        with translated_errors():
            for name, value in params.items():
                schema = value.schema.with_metadata(
                    {
                        **(value.schema.metadata or {}),
                        **protocol.put_metadata(command_id, request.api, name),
                        # All the command's parameters: a server that got only
                        # some of them (a load balancer split the puts) says so.
                        **params_metadata(params),
                    }
                )
                writer, _ = self._client.do_put(descriptor, schema, options or self._options(None))
                for batch in self._upload_batches(value):
                    writer.write_batch(batch.replace_schema_metadata(schema.metadata))
                writer.close()
        return command_id

    def _upload_batches(self, value: pa.Table | pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
        rows, nbytes = self.upload_batch_rows, self.upload_batch_bytes
        if isinstance(value, pa.RecordBatchReader):
            return streaming.bounded_stream(value, rows, nbytes)
        return streaming.bounded_batches(value, rows, nbytes)

    def drop(self, command_id: str, timeout: float | None = None) -> bool:
        """Discard a command this client staged without running it."""
        action = flight.Action(ACTION_DROP, protocol.ticket_bytes(command_id))
        with translated_errors():
            results = list(self._client.do_action(action, self._options(timeout)))
        return bool(json.loads(results[0].body.to_pybytes())["dropped"])

    def check_protocol(self) -> int:
        """The server's protocol version, asked once per client: a
        ProtocolVersionError saying which side to upgrade where the two do
        not work together (see :mod:`flightlab.wire.version`)."""
        with self._lock:
            if self.server_protocol is None:
                answer = self._server_versions()
                self.server_protocol = version.check_server(
                    answer, self.protocol, self.min_server_protocol
                )
                self._server_answer = answer
            return self.server_protocol

    def server_offers(self, feature: str) -> bool:
        """Whether the server says it offers ``feature`` (e.g. "export")."""
        self.check_protocol()
        return bool(self._server_answer.get(feature))

    def _server_versions(self) -> dict[str, Any]:
        # A body, though the server reads none: a server from before the
        # exchange reads it as a command id, and then names the action unknown.
        body = json.dumps({"client_protocol": self.protocol}).encode()
        action = flight.Action(ACTION_PROTOCOL_VERSION, body)
        with translated_errors():
            try:
                results = list(self._client.do_action(action, self._options(None)))
            except flight.FlightError as exc:
                if isinstance(exception_for_flight_error(exc), UnknownApiError):
                    return {}  # a server from before the exchange: version 1
                raise
        return json.loads(results[0].body.to_pybytes())

    def stats(self, timeout: float | None = None) -> dict[str, Any]:
        with translated_errors():
            action = flight.Action(ACTION_STATS, b"")
            results = list(self._client.do_action(action, self._options(timeout)))
        return json.loads(results[0].body.to_pybytes())

    def list_actions(self) -> list[tuple[str, str]]:
        with translated_errors():
            return [(a.type, a.description) for a in self._client.list_actions()]

    def _options(
        self, timeout: float | None, partitions: bool = False, owner: bytes | None = None
    ) -> flight.FlightCallOptions:
        timeout = self.timeout if timeout is None else timeout
        # Sent on every call: the server binds the commands this client stages
        # to it, so that no other client can see, run or drop them.
        headers = [
            (OWNER_HEADER.encode(), owner or self._owner),
            (PROTOCOL_HEADER.encode(), str(self.protocol).encode()),
        ]
        if partitions and self.partitions > 1:
            headers.append((PARTITIONS_HEADER.encode(), str(self.partitions).encode()))
        if self.compression is None:
            return flight.FlightCallOptions(timeout=timeout, headers=headers)
        return flight.FlightCallOptions(
            timeout=timeout,
            headers=[*headers, (COMPRESSION_HEADER.encode(), self.compression.encode())],
            write_options=streaming.write_options(self.compression),
        )


@dataclass(frozen=True)
class Progress:
    """How much of a result has arrived.

    ``total_rows`` is exact where the server knows it before streaming (a
    historical retrieval: one row per entity row; None for a pull that
    flightlab's engine streams as it reads). ``total_bytes`` is the result's
    size in the server's memory when the server held it whole (Feast's stores
    answered), None when the result streams as it is made; it may exceed the
    sum of ``bytes`` received (Arrow leaves out validity bitmaps of columns
    without nulls on the wire): use it as an estimate, and ``fraction`` (by
    rows) for progress.
    """

    rows: int
    bytes: int
    batches: int
    total_rows: int | None = None
    total_bytes: int | None = None

    @property
    def fraction(self) -> float | None:
        """Share of the rows received, when the server told the total."""
        if not self.total_rows:
            return None if self.total_rows is None else 1.0
        return self.rows / self.total_rows


ProgressCallback = Callable[[Progress], None]


def read_batches(
    reader: flight.FlightStreamReader, progress: ProgressCallback | None
) -> Iterator[pa.RecordBatch]:
    rows = nbytes = count = 0
    total_rows = total_bytes = None
    while True:
        with translated_errors():
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                return
        if count == 0:
            total_rows, total_bytes = streaming.parse_totals(chunk.app_metadata)
        batch = chunk.data
        rows, nbytes, count = rows + batch.num_rows, nbytes + batch.nbytes, count + 1
        if progress is not None:
            progress(Progress(rows, nbytes, count, total_rows, total_bytes))
        if batch.num_rows:
            yield batch
