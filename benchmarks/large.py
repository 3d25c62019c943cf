"""The benchmark's large part (the store ``large``): 10M entity rows and more
on a 10M-row source, each server and in-process limit within a set memory.

The data is datagen's ``user_stats`` view over ``datagen.LARGE_USERS`` users
(10M feature rows) in a duckdb repo of its own (``datagen.build_large_repo``);
its cases are ``rows:N:src10m``. flightlab's servers run with
``--engine-memory-limit`` (``--large-memory-limit``, 1GB by default) and
``--max-entity-rows`` raised to the case's rows; the engine limit runs its
DuckDB query with the same memory limit. The client repos set
``coerce_tz_aware: false``, the setting the README recommends for large
entity frames: Feast otherwise copies the whole frame before the client sees
it. Feast's ``serve_offline`` is stopped at ``--feast-cap`` seconds, or when its
RSS grows past ``--large-rss-cap``, whichever comes first.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from datagen import LARGE_VARIANT

from flightlab.testing.processes import current_rss

STORE = "large"
# The modes the large part runs, in order.
MODES = ["engine-limit", "flightlab", "flightlab-parquet", "feast"]
# Partitioned fetches (issue 21's partitioned endpoints), one mode per count:
# "flightlab-partitioned-N", flightlab's client with `partitions: N` in its
# offline store config (to_arrow). A count added here is all a new mode needs.
PARTITIONS: tuple[int, ...] = (2, 4)
# Modes stopped at --feast-cap seconds or at --large-rss-cap of server RSS growth.
CAPPED = ("feast",)
POLL_SECONDS = 0.2


def partitioned_mode(partitions: int) -> str:
    return f"flightlab-partitioned-{partitions}"


def all_modes() -> list[str]:
    return [*MODES[:-1], *(partitioned_mode(n) for n in PARTITIONS), MODES[-1]]


def cases(sizes: list[int]) -> list[str]:
    return [f"rows:{rows}:{LARGE_VARIANT}" for rows in sizes]


class RssCap:
    """Watches a server's RSS while a capped call runs; past ``cap_bytes``
    above ``baseline`` it calls ``stop`` (which kills the client) once."""

    def __init__(self, pid: int, cap_bytes: int, stop) -> None:
        self.pid, self.cap_bytes, self.stop = pid, cap_bytes, stop
        self.tripped_at: int | None = None  # the RSS growth that tripped it

    @contextmanager
    def watching(self) -> Iterator[RssCap]:
        baseline = current_rss(self.pid) or 0
        done = threading.Event()

        def watch() -> None:
            while not done.wait(POLL_SECONDS):
                growth = (current_rss(self.pid) or 0) - baseline
                if growth > self.cap_bytes:
                    self.tripped_at = growth
                    self.stop()
                    return

        watcher = threading.Thread(target=watch, name="rss-cap", daemon=True)
        watcher.start()
        try:
            yield self
        finally:
            done.set()
            watcher.join()
