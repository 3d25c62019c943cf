"""The tunables of a server: batch sizes, workers, queueing and staging bounds."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BATCH_ROWS = 65_536
# A result batch never exceeds this many bytes (gRPC caps a message at 2 GiB;
# smaller messages also keep both ends' memory flat while streaming).
DEFAULT_MAX_BATCH_BYTES = 8 * 1024**2
DEFAULT_WORKERS = 4
DEFAULT_QUEUE_TIMEOUT = 60.0
# A staged command never run is dropped after this long.
DEFAULT_STAGED_TTL = 600.0
# The bytes staged by all clients together stay under this cap.
DEFAULT_MAX_STAGED_BYTES = 4 * 1024**3
# One parameter other than a table (a string, feature references, a proto).
DEFAULT_MAX_PARAM_BYTES = 4 * 1024**2
# Entity rows of one request.
DEFAULT_MAX_ENTITY_ROWS = 10_000_000
# A client that reads partitions gets at most this many endpoints for a result,
# each of at least this many entity rows (a smaller request is one stream).
DEFAULT_MAX_PARTITIONS = 8
# Recent results kept for identical requests (flightlab.dispatch.reuse); 0: none.
DEFAULT_REUSE_BYTES = 1024**3
DEFAULT_MIN_PARTITION_ROWS = 250_000


@dataclass(frozen=True)
class ServerLimits:
    """How much a server does at once, and how long it keeps things."""

    batch_rows: int = DEFAULT_BATCH_ROWS
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    workers: int = DEFAULT_WORKERS
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT
    staged_ttl: float = DEFAULT_STAGED_TTL
    max_staged_bytes: int = DEFAULT_MAX_STAGED_BYTES
    max_param_bytes: int = DEFAULT_MAX_PARAM_BYTES
    max_entity_rows: int = DEFAULT_MAX_ENTITY_ROWS
    max_partitions: int = DEFAULT_MAX_PARTITIONS
    min_partition_rows: int = DEFAULT_MIN_PARTITION_ROWS
    reuse_bytes: int = DEFAULT_REUSE_BYTES

    def __post_init__(self) -> None:
        for name in (
            "batch_rows",
            "max_batch_bytes",
            "workers",
            "max_staged_bytes",
            "max_param_bytes",
            "max_entity_rows",
            "max_partitions",
            "min_partition_rows",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.reuse_bytes < 0:
            raise ValueError("reuse_bytes must not be negative")
        for name in ("queue_timeout", "staged_ttl"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
