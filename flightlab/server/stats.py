"""Counters a running server keeps about the requests it served."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from flightlab.wire.errors import shortened


@dataclass(frozen=True)
class ErrorRecord:
    api: str
    error_class: str
    message: str
    at: float


@dataclass
class StatsSnapshot:
    requests_by_api: dict[str, int] = field(default_factory=dict)
    errors_by_api: dict[str, int] = field(default_factory=dict)
    # Retrievals answered, by who answered them: "flightlab" (the engine) or "feast".
    requests_by_engine: dict[str, int] = field(default_factory=dict)
    rows_in: int = 0
    rows_out: int = 0
    bytes_out: int = 0
    last_error: ErrorRecord | None = None

    def to_json(self) -> dict:
        last = self.last_error
        return {
            "requests_by_api": self.requests_by_api,
            "errors_by_api": self.errors_by_api,
            "requests_by_engine": self.requests_by_engine,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "bytes_out": self.bytes_out,
            "last_error": None
            if last is None
            else {"api": last.api, "class": last.error_class, "message": last.message},
        }


class ServerStats:
    """Thread-safe request counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._engines: Counter[str] = Counter()
        self._rows_in = 0
        self._rows_out = 0
        self._bytes_out = 0
        self._last_error: ErrorRecord | None = None

    def record_success(
        self, api: str, rows_in: int, rows_out: int, bytes_out: int, engine: str | None = None
    ) -> None:
        with self._lock:
            self._requests[api] += 1
            if engine is not None:
                self._engines[engine] += 1
            self._rows_in += rows_in
            self._rows_out += rows_out
            self._bytes_out += bytes_out

    def record_error(self, api: str, exc: BaseException) -> None:
        with self._lock:
            self._requests[api] += 1
            self._errors[api] += 1
            # Bounded as the error sent to the client: the text may quote a
            # 100 MB parameter, and any caller of the stats action sees it.
            message = shortened(str(exc))
            self._last_error = ErrorRecord(api, type(exc).__name__, message, time.time())

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(
                requests_by_api=dict(self._requests),
                errors_by_api=dict(self._errors),
                requests_by_engine=dict(self._engines),
                rows_in=self._rows_in,
                rows_out=self._rows_out,
                bytes_out=self._bytes_out,
                last_error=self._last_error,
            )
