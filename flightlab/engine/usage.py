"""What the engine holds and has read: figures a test or an operator can check."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class EngineUsage:
    """``open_databases``: DuckDB databases opened for requests and not yet
    closed (one per request in flight; 0 on an idle server). ``batches_read``
    and ``rows_read``: what the engine has taken from DuckDB's result readers
    since it started. A streamed result is read as the client takes it, so
    while a client holds its first batch, ``rows_read`` has not reached the
    result's size."""

    open_databases: int
    batches_read: int
    rows_read: int


class UsageCounters:
    """Thread-safe counters behind :class:`EngineUsage`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = 0
        self._batches = 0
        self._rows = 0

    def opened(self) -> None:
        with self._lock:
            self._open += 1

    def closed(self) -> None:
        with self._lock:
            self._open -= 1

    def read(self, rows: int) -> None:
        with self._lock:
            self._batches += 1
            self._rows += rows

    def snapshot(self) -> EngineUsage:
        with self._lock:
            return EngineUsage(self._open, self._batches, self._rows)
