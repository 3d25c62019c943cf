"""How the server runs one call: admitted, run on a worker, counted and logged once.

The Flight RPCs (:mod:`flightlab.server.rpcs`) decode a call into a request
and hand it to :class:`CallRunner`, which

- admits the call past the drain gate and keeps it counted as in flight;
- checks the request against the server's caps and runs it on the worker
  pool (a request that returns data keeps its worker while it streams);
- counts and logs the call once it has ended: when the handler returns, or,
  for a streamed result, when its last batch is out, its client went away or
  it failed midway;
- turns any failure into the Flight error the client receives, and drops
  the command that failed, so no state is kept for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from flightlab.engine.results import ResultStream
from flightlab.errors import INTERNAL, failure_status, shortened
from flightlab.operations.counts import FinishedCall, RequestCounts
from flightlab.operations.drain import DrainGate
from flightlab.server import memory
from flightlab.server.auth import Caller, caller_of, owner_of
from flightlab.server.caps import check_request
from flightlab.server.limits import ServerLimits
from flightlab.server.streams import ClosingIterator, closing
from flightlab.server.workers import WorkerPool
from flightlab.wire import protocol, streaming
from flightlab.wire.flight_errors import to_flight_error

logger = logging.getLogger("flightlab.server")

# Runs a decoded request for a user: a ResultStream, or a summary dict.
RunRequest = Callable[[protocol.Request, Any], Any]
# Drops a staged command (id, owner) that will not run.
DropCommand = Callable[[str, "str | None"], object]
BatchPairs = Iterator[tuple[pa.RecordBatch, "bytes | None"]]


class Call:
    """What is known and logged about one RPC."""

    def __init__(self, rpc: str, caller: Caller, api: str | None, owner: str | None = None):
        self.rpc = rpc
        self.caller = caller
        self.owner = owner  # the key its staged commands belong to
        self.api = api
        self.command_id: str | None = None
        self.rows_in = 0
        self.rows_out = 0
        self.bytes_out = 0
        self.engine: str | None = None
        self.executed = False
        self.request: protocol.Request | None = None
        # A result streamed after the RPC handler returned: counted and logged
        # when its last batch has gone, not when the handler returns.
        self.streaming = False
        self.started = time.perf_counter()

    def finished(self, error: BaseException | None = None) -> FinishedCall:
        return FinishedCall(
            api=self.api or self.rpc,
            rpc=self.rpc,
            ran=self.executed,
            seconds=time.perf_counter() - self.started,
            engine=self.engine,
            rows_in=self.rows_in,
            rows_out=self.rows_out,
            bytes_in=_bytes_in(self.request),
            bytes_out=self.bytes_out,
            error=error,
        )


class CallRunner:
    """Runs the calls of one serving server (see the module's text)."""

    def __init__(
        self,
        *,
        run_request: RunRequest,
        pool: WorkerPool,
        limits: ServerLimits,
        counts: RequestCounts,
        drain: DrainGate,
        drop_command: DropCommand,
    ):
        self._run_request = run_request
        self._pool = pool
        self._limits = limits
        self._counts = counts
        self._drain = drain
        self._drop_command = drop_command

    @contextmanager
    def handling(self, rpc: str, context: Any, api: str | None = None) -> Iterator[Call]:
        """Around an RPC handler: admit, count, log, and raise Flight errors."""
        call = Call(rpc, caller_of(context), api, owner_of(context))
        self._counts.connection(context.peer())
        with self._drain.active():
            try:
                self._drain.admit(rpc)
                yield call
            except Exception as exc:
                if not call.streaming:  # a streamed result records its own end
                    self._record(call, exc)
                memory.release_soon()  # a refused upload may have been large
                raise to_flight_error(exc) from None
            if not call.streaming:
                self._record(call)
                _release_memory_after(call)

    def execute(self, call: Call, request: protocol.Request, context: Any) -> Any:
        """Run a decoded request that returns no data on the worker pool."""
        user = self._admit_request(call, request)
        result = self._pool.run(lambda: self._run_request(request, user), context.is_cancelled)
        call.executed = True
        return result

    def stream(
        self, call: Call, request: protocol.Request, context: Any
    ) -> tuple[pa.Schema, BatchPairs]:
        """Run a request that returns data: its schema, then (batch, metadata)
        pairs within the server's bounds as the worker produces them. The call
        is counted and logged once the stream has ended."""
        user = self._admit_request(call, request)
        limits = self._limits

        def open_stream() -> tuple[ResultStream, Iterator[pa.RecordBatch]]:
            result = self._run_request(request, user)
            bounded = streaming.bounded_stream(
                result.batches, limits.batch_rows, limits.max_batch_bytes
            )
            return result, closing(bounded, result.close)

        result, batches = self._pool.stream(open_stream, context.is_cancelled)
        call.engine = result.engine
        call.executed = call.streaming = True
        pairs = streaming.stream_batches(
            result.schema, batches, (result.total_rows, result.total_bytes), context.is_cancelled
        )
        # A result stream outlives its RPC handler: a drain waits for it too.
        release_gate = self._drain.hold()

        def on_end(outcome: BaseException | None) -> None:
            try:
                batches.close()  # frees the worker however the stream ended
            finally:
                release_gate()
                self._record(call, outcome)
                _release_memory_after(call)

        return result.schema, ClosingIterator(self._counted(call, pairs), on_end, to_flight_error)

    def _admit_request(self, call: Call, request: protocol.Request) -> Any:
        call.rows_in = request.rows_in()
        call.request = request
        check_request(request, self._limits)
        return call.caller.user

    def _counted(self, call: Call, pairs: BatchPairs) -> BatchPairs:
        for batch, metadata in pairs:
            self._drain.check_not_cut()  # the drain time is over: end at this batch
            call.rows_out += batch.num_rows
            call.bytes_out += batch.nbytes
            yield batch, metadata

    def _record(self, call: Call, error: BaseException | None = None) -> None:
        finished = call.finished(error)
        self._counts.count(finished)
        if error is not None:
            self._log_failure(call, error)
            if call.command_id is not None:
                # Whatever failed, the command will not run: keep no state for it.
                self._drop_command(call.command_id, call.owner)
        elif not call.executed:
            logger.debug(
                "%s %s command=%s %.3fs", call.rpc, call.api, call.command_id, finished.seconds
            )
        else:
            logger.info(
                "%s command=%s user=%s engine=%s rows_in=%d rows_out=%d bytes_out=%d %.3fs",
                call.api,
                call.command_id,
                call.caller.name or "-",
                call.engine or "-",
                call.rows_in,
                call.rows_out,
                call.bytes_out,
                finished.seconds,
            )

    def _log_failure(self, call: Call, exc: BaseException) -> None:
        api = call.api or call.rpc
        if failure_status(exc) == INTERNAL:
            logger.error("%s command=%s failed", api, call.command_id, exc_info=exc)
        else:
            logger.warning(
                "%s command=%s rejected: %s: %s",
                api,
                call.command_id,
                type(exc).__name__,
                shortened(str(exc)),
            )


def _bytes_in(request: protocol.Request | None) -> int:
    """The bytes of the tables a request carried (entity rows, rows to write)."""
    if request is None:
        return 0
    tables = request.table_params()
    return sum(t.nbytes for t in tables.values() if isinstance(t, pa.Table))


def _release_memory_after(call: Call) -> None:
    """Give a large call's memory back to the system (see server.memory)."""
    if call.rows_in + call.rows_out > 100_000 or call.bytes_out > memory.LARGE_CALL_BYTES:
        memory.release_soon()
