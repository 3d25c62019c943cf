"""The one record a server keeps of the calls it answered, and its ``stats`` view.

Every finished call is counted once, here (:meth:`RequestCounts.count`), from
the one place every call ends. Two views read the same counts: the ``stats``
action (:meth:`RequestCounts.stats`, JSON) and the Prometheus metrics
(:mod:`flightlab.operations.metrics`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from flightlab.errors import shortened

# The engine label of a call no retrieval engine answered: a write, a staging
# put, a request refused before an engine was chosen.
NO_ENGINE = "none"
OK = "ok"
ERROR = "error"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Client connections told apart in the stats (a long-lived server sees more).
_MAX_PEERS = 100_000


@dataclass(frozen=True)
class FinishedCall:
    """What is counted of one call: ``api`` (or the RPC's name when it never
    named one), who answered it, its rows and bytes, and its error if it failed.
    ``ran`` is False for a call that only staged a parameter or looked up a
    command: such a call is no request of its own."""

    api: str
    rpc: str
    ran: bool
    seconds: float
    engine: str | None = None
    rows_in: int = 0
    rows_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    error: BaseException | None = None


@dataclass(frozen=True)
class ErrorRecord:
    api: str
    error_class: str
    message: str
    at: float


class RequestCounts:
    """Thread-safe counters of finished calls, by label."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, str]] = Counter()  # api, engine, outcome
        self.errors: Counter[tuple[str, str]] = Counter()  # api, error class
        self.rows_in: Counter[str] = Counter()
        self.rows_out: Counter[str] = Counter()
        self.bytes_in: Counter[str] = Counter()
        self.bytes_out: Counter[str] = Counter()
        self.staged_params: Counter[str] = Counter()
        # (api, engine) -> the count in each latency bucket, then the count, then the sum
        self.latency: dict[tuple[str, str], list[float]] = {}
        self.last_error: ErrorRecord | None = None
        # The client connections (gRPC peers: address and port) calls came on.
        self.peers: set[str] = set()

    def connection(self, peer: str) -> None:
        """Note the connection a call came on (the first _MAX_PEERS are told apart)."""
        with self._lock:
            if len(self.peers) < _MAX_PEERS:
                self.peers.add(peer)

    def count(self, call: FinishedCall) -> None:
        engine = call.engine or NO_ENGINE
        with self._lock:
            if call.error is not None:
                self.requests[(call.api, engine, ERROR)] += 1
                error_class = type(call.error).__name__
                self.errors[(call.api, error_class)] += 1
                self._observe_latency(call.api, engine, call.seconds)
                # Bounded as the error sent to the client: the text may quote a
                # 100 MB parameter, and any caller of the stats action sees it.
                message = shortened(str(call.error))
                self.last_error = ErrorRecord(call.api, error_class, message, time.time())
                return
            if not call.ran:
                if call.rpc == "do_put" and call.api != call.rpc:
                    self.staged_params[call.api] += 1
                return
            self.requests[(call.api, engine, OK)] += 1
            self._observe_latency(call.api, engine, call.seconds)
            self.rows_in[call.api] += call.rows_in
            self.rows_out[call.api] += call.rows_out
            self.bytes_in[call.api] += call.bytes_in
            self.bytes_out[call.api] += call.bytes_out

    def _observe_latency(self, api: str, engine: str, seconds: float) -> None:
        counts = self.latency.setdefault((api, engine), [0.0] * (len(LATENCY_BUCKETS) + 2))
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                counts[i] += 1
        counts[-2] += 1  # +Inf, i.e. the count
        counts[-1] += seconds

    def snapshot(self) -> RequestCounts:
        """A consistent copy, for a view to read without the lock."""
        copy = RequestCounts()
        with self._lock:
            for name in ("requests", "errors", "rows_in", "rows_out", "bytes_in", "bytes_out"):
                setattr(copy, name, Counter(getattr(self, name)))
            copy.staged_params = Counter(self.staged_params)
            copy.latency = {k: list(v) for k, v in self.latency.items()}
            copy.last_error = self.last_error
            copy.peers = set(self.peers)
        return copy

    def stats(self) -> dict[str, Any]:
        """The ``stats`` action's view: requests and errors per API, who
        answered the requests that succeeded ("flightlab", the engine, or
        "feast"), rows and bytes, and the last error."""
        counts = self.snapshot()
        by_api: Counter[str] = Counter()
        by_engine: Counter[str] = Counter()
        for (api, engine, outcome), n in counts.requests.items():
            by_api[api] += n
            if outcome == OK and engine != NO_ENGINE:
                by_engine[engine] += n
        errors_by_api: Counter[str] = Counter()
        for (api, _), n in counts.errors.items():
            errors_by_api[api] += n
        last = counts.last_error
        return {
            "requests_by_api": dict(by_api),
            "errors_by_api": dict(errors_by_api),
            "requests_by_engine": dict(by_engine),
            "rows_in": sum(counts.rows_in.values()),
            "rows_out": sum(counts.rows_out.values()),
            "bytes_out": sum(counts.bytes_out.values()),
            "client_connections": len(counts.peers),
            "last_error": None
            if last is None
            else {"api": last.api, "class": last.error_class, "message": last.message},
        }
