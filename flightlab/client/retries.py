"""Retrying reads when the server could not be reached.

A read (a retrieval, a column lookup, a validation) is retried a few times
with a doubling pause when the server is unreachable (a restart, a rolling
deploy) or says it is busy or draining: running it again is safe, it
changes nothing. Writes are never retried, since a write whose reply was
lost may have happened. A streamed read is retried only until its first
batch has been handed out; after that, a failure ends it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pyarrow as pa

from flightlab.errors import ConnectionFailedError, ServerBusyError

logger = logging.getLogger("flightlab.client")

T = TypeVar("T")

# Failures after which nothing ran on the server: worth another try.
RETRYABLE = (ConnectionFailedError, ServerBusyError)


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` more tries after the first, the first after ``backoff``
    seconds, each pause twice the last (at most ``max_backoff``), give or
    take a tenth so that many clients do not come back at once."""

    retries: int = 3
    backoff: float = 0.25
    max_backoff: float = 4.0
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0:
            raise ValueError("retries and backoff must not be negative")

    def run(self, attempt: Callable[[], T], what: str) -> T:
        """``attempt()``, tried again while it fails with a retryable error."""
        for number in range(self.retries + 1):
            try:
                return attempt()
            except RETRYABLE as exc:
                self._pause_or_raise(exc, number, what)
        raise AssertionError("unreachable")

    def batches(
        self, open_batches: Callable[[], Iterator[pa.RecordBatch]], what: str
    ) -> Iterator[pa.RecordBatch]:
        """The batches of ``open_batches()``, opened again while it fails with
        a retryable error before its first batch."""
        for number in range(self.retries + 1):
            batches = open_batches()
            try:
                first = next(batches, None)
            except RETRYABLE as exc:
                batches.close()
                self._pause_or_raise(exc, number, what)
                continue
            if first is None:
                return
            yield first
            yield from batches
            return

    def _pause_or_raise(self, exc: Exception, number: int, what: str) -> None:
        if number >= self.retries:
            raise exc
        pause = min(self.max_backoff, self.backoff * 2**number) * random.uniform(0.9, 1.1)
        logger.warning(
            "%s: %s; trying again in %.2f s (retry %d of %d)",
            what,
            type(exc).__name__,
            pause,
            number + 1,
            self.retries,
        )
        self.sleep(pause)
