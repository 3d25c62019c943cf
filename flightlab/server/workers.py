"""A bounded pool for the server's Feast calls.

gRPC hands every RPC its own thread; a point-in-time join is heavy, so the
joins themselves run here, at most ``workers`` at a time. A request waits in
line for at most ``queue_timeout`` seconds, then gets a clear "busy" error; a
request whose client has gone (cancelled, deadline passed) stops waiting, and
its result, if the join was already running, is thrown away when it ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from flightlab.wire.errors import ClientGoneError, ServerBusyError

T = TypeVar("T")

# How often a waiting RPC thread checks whether its client is still there.
_POLL_SECONDS = 0.05

_GONE_WHILE_QUEUED = "the client went away while the request was queued"


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
        started = threading.Event()

        def job() -> T:
            # A worker can free up between two polls of the waiting RPC thread,
            # after the client left: do not start a join nobody will read.
            # Checked before ``started`` is set, so the RPC (and its context)
            # is certainly still alive, waiting in _wait_for_start.
            gone = is_cancelled()
            with self._lock:
                self._queued -= 1
                self._running += 0 if gone else 1
            started.set()
            if gone:
                raise ClientGoneError(_GONE_WHILE_QUEUED)
            try:
                return fn()
            finally:
                with self._lock:
                    self._running -= 1

        with self._lock:
            self._queued += 1
        future = self._executor.submit(job)
        self._wait_for_start(future, started, is_cancelled)
        return self._wait_for_result(future, is_cancelled)

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

    def _wait_for_result(self, future: Future, is_cancelled: Callable[[], bool]) -> T:
        # Wait with futures.wait, not future.result(timeout): a TimeoutError
        # that ``fn`` itself raised (a database timeout, socket.timeout) would
        # be taken for the end of a poll and the call would spin forever.
        while not wait((future,), timeout=_POLL_SECONDS).done:
            if is_cancelled():
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
