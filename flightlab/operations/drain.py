"""Graceful drain: stop taking new commands, let the running ones finish.

A replica being replaced (``SIGTERM`` from Kubernetes, a rolling update) must
neither cut a retrieval short nor leave a write half done. :class:`DrainGate`
sits in front of every RPC: it counts the calls and result streams still in
flight, and once draining it refuses the RPCs that start new work (uploads:
``do_put``, ``do_exchange``) with :class:`ServerDrainingError`, an
"unavailable" error that clients retry elsewhere. Commands already staged may
still run: their client has done half the work, and finishing is cheaper
than failing it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flightlab.errors import ServerDrainingError

# The RPCs that begin a new command; refused while draining.
NEW_WORK_RPCS = frozenset({"do_put", "do_exchange"})


class DrainGate:
    """Thread-safe admission and in-flight count of a server's RPCs."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._in_flight = 0
        self._draining = False
        self._cut = False

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def admit(self, rpc: str) -> None:
        """Raise :class:`ServerDrainingError` for new work once draining."""
        if self._draining and rpc in NEW_WORK_RPCS:
            raise ServerDrainingError(
                "the server is draining before it shuts down and takes no new "
                "commands; retry on another replica"
            )

    @contextmanager
    def active(self) -> Iterator[None]:
        """Count the enclosed RPC as in flight."""
        self._enter()
        try:
            yield
        finally:
            self._leave()

    def hold(self) -> Callable[[], None]:
        """Count one more call in flight until the returned release is called
        (once; later calls do nothing). A result stream outlives its RPC
        handler (Flight reads it afterwards), so it holds the gate by itself."""
        self._enter()
        once = threading.Lock()

        def release() -> None:
            if once.acquire(blocking=False):
                self._leave()

        return release

    def start_draining(self) -> None:
        self._draining = True

    def wait_idle(self, seconds: float) -> bool:
        """Wait until nothing is in flight, at most ``seconds``; True if idle."""
        deadline = time.monotonic() + seconds
        with self._lock:
            while self._in_flight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
            return True

    def cut(self) -> None:
        """The drain time is over: result streams still open end at their next batch."""
        self._cut = True

    def check_not_cut(self) -> None:
        """Raise :class:`ServerDrainingError` once the drain time is over."""
        if self._cut:
            raise ServerDrainingError("the server shut down before this result was sent")

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._lock.notify_all()
