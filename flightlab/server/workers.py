"""A bounded pool for the server's Feast calls.

gRPC hands every RPC its own thread; a point-in-time join is heavy, so the
joins themselves run here, at most ``workers`` at a time. A request waits in
line for at most ``queue_timeout`` seconds, then gets a clear "busy" error; a
request whose client has gone (cancelled, deadline passed) stops waiting, and
its result, if the join was already running, is thrown away when it ends.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

from flightlab.errors import ClientGoneError, ServerBusyError
from flightlab.operations.cancellation import working_for

T = TypeVar("T")

# How often a waiting RPC thread checks whether its client is still there.
_POLL_SECONDS = 0.05

_GONE_WHILE_QUEUED = "the client went away while the request was queued"

# Items a streaming worker may produce ahead of the client reading them.
_STREAM_AHEAD = 2
_END = object()


@dataclass(frozen=True)
class _Head:
    value: Any


@dataclass(frozen=True)
class _Failure:
    exc: BaseException


class WorkerPool:
    def __init__(self, workers: int, queue_timeout: float):
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers = workers
        self.queue_timeout = queue_timeout
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="flightlab-worker")
        self._lock = threading.Lock()
        self._queued = 0
        self._running = 0

    def run(self, fn: Callable[[], T], is_cancelled: Callable[[], bool] = lambda: False) -> T:
        """Run ``fn`` on a worker; wait for it unless the client goes away."""
        gone = threading.Event()  # set when the waiting RPC gives up on the client
        future = self._submit(fn, is_cancelled, gone)
        return self._wait_for_result(future, is_cancelled, gone)

    def stream(
        self,
        open_stream: Callable[[], tuple[T, Iterator[Any]]],
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> tuple[T, Iterator[Any]]:
        """Run ``open_stream`` on a worker, which keeps the worker for as long
        as it produces items: returns ``(head, items)``, the items handed over
        through a short queue as the worker makes them.

        The head (a result's schema, say) is returned once it is ready, so an
        error before the first item raises here, not midway through a stream.
        The worker stops when the client goes away or stops reading.
        """
        handoff: queue.Queue = queue.Queue(maxsize=_STREAM_AHEAD)
        abandoned = threading.Event()

        def offer(item: Any) -> bool:
            while not abandoned.is_set():
                try:
                    handoff.put(item, timeout=_POLL_SECONDS)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            items: Iterator[Any] = iter(())
            try:
                head, items = open_stream()
                if not offer(_Head(head)):
                    return
                for item in items:
                    if not offer(item):
                        return
                offer(_END)
            except BaseException as exc:  # raised on the reading side
                offer(_Failure(exc))
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()

        future = self._submit(produce, is_cancelled, abandoned)
        items = self._handed_over(handoff, abandoned, future, is_cancelled)
        try:
            first = next(items)
        except StopIteration:
            raise RuntimeError("a stream ended before its head") from None
        return first.value, items

    def _handed_over(
        self,
        handoff: queue.Queue,
        abandoned: threading.Event,
        future: Future,
        is_cancelled: Callable[[], bool],
    ) -> Iterator[Any]:
        try:
            while True:
                try:
                    item = handoff.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    if is_cancelled():
                        raise ClientGoneError("the client went away; streaming stopped") from None
                    if future.done() and handoff.empty():
                        future.result()  # a worker that died without a word
                        return
                    continue
                if item is _END:
                    wait((future,))  # the worker is free before the stream ends
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield item
        finally:
            abandoned.set()  # the worker stops at its next hand-over

    def _submit(
        self, fn: Callable[[], T], is_cancelled: Callable[[], bool], gone: threading.Event
    ) -> Future:
        """Queue ``fn``; it runs knowing its client has gone once ``gone`` is
        set (:mod:`flightlab.operations.cancellation`): the RPC's own context
        is not asked from the worker, which may outlive it."""
        started = threading.Event()

        def job() -> T:
            # A worker can free up between two polls of the waiting RPC thread,
            # after the client left: do not start a join nobody will read.
            # Checked before ``started`` is set, so the RPC (and its context)
            # is certainly still alive, waiting in _wait_for_start.
            left = is_cancelled()
            with self._lock:
                self._queued -= 1
                self._running += 0 if left else 1
            started.set()
            if left:
                raise ClientGoneError(_GONE_WHILE_QUEUED)
            try:
                with working_for(gone.is_set):
                    return fn()
            finally:
                with self._lock:
                    self._running -= 1

        with self._lock:
            self._queued += 1
        future = self._executor.submit(job)
        self._wait_for_start(future, started, is_cancelled)
        return future

    def _wait_for_start(
        self, future: Future, started: threading.Event, is_cancelled: Callable[[], bool]
    ) -> None:
        waited = 0.0
        while not started.wait(_POLL_SECONDS):
            waited += _POLL_SECONDS
            gone = is_cancelled()
            if (gone or waited >= self.queue_timeout) and future.cancel():
                with self._lock:
                    self._queued -= 1
                if gone:
                    raise ClientGoneError(_GONE_WHILE_QUEUED)
                raise ServerBusyError(
                    f"the server is busy: all {self.workers} workers stayed occupied for "
                    f"{self.queue_timeout:g} s; retry later"
                )

    def _wait_for_result(
        self, future: Future, is_cancelled: Callable[[], bool], gone: threading.Event
    ) -> T:
        # Wait with futures.wait, not future.result(timeout): a TimeoutError
        # that ``fn`` itself raised (a database timeout, socket.timeout) would
        # be taken for the end of a poll and the call would spin forever.
        while not wait((future,), timeout=_POLL_SECONDS).done:
            if is_cancelled():
                gone.set()
                raise ClientGoneError(
                    "the client went away; the running join's result will be discarded"
                )
        try:
            return future.result()
        except CancelledError:
            raise ClientGoneError("the request was cancelled") from None

    def load(self) -> dict[str, int]:
        with self._lock:
            return {"workers": self.workers, "running": self._running, "queued": self._queued}

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
