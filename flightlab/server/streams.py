"""The one way the server ends a stream it hands on, however the stream ends.

A result is a chain of iterators (the engine's batches, cut to bounds, paired
with their metadata, counted) whose end must free what produced it: a DuckDB
database, read locks, a worker, a place in the drain's count. Generators
cannot promise that: a generator's ``finally`` never runs when it is closed
before its first item (a client gone before the first batch), and its
resources would wait for the garbage collector. So the chain's links hold
nothing, and :class:`ClosingIterator` holds the clean-up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from flightlab.errors import ClientGoneError

T = TypeVar("T")

# What ``on_end`` is told when the stream was closed or dropped before its end.
DROPPED = ClientGoneError("the client stopped reading")


class ClosingIterator(Iterator[T]):
    """``items``, then ``on_end(outcome)`` exactly once however iteration ends:
    ``None`` when the items ran out, the exception when one was raised, and
    :data:`DROPPED` when the stream was closed (or garbage collected) first.
    Closing also closes ``items``. With ``translate``, an exception from
    ``items`` is raised as ``translate(exc)`` (``on_end`` sees the original).
    """

    def __init__(
        self,
        items: Iterator[T],
        on_end: Callable[[BaseException | None], object],
        translate: Callable[[BaseException], BaseException] | None = None,
    ):
        self._items = items
        self._on_end = on_end
        self._translate = translate
        self._once = threading.Lock()

    def __next__(self) -> T:
        try:
            return next(self._items)
        except StopIteration:
            self._end(None)
            raise
        except BaseException as exc:
            self._end(exc)
            if self._translate is None or not isinstance(exc, Exception):
                raise
            raise self._translate(exc) from None

    def close(self) -> None:
        close = getattr(self._items, "close", None)
        try:
            if close is not None:
                close()
        finally:
            self._end(DROPPED)

    def _end(self, outcome: BaseException | None) -> None:
        if self._once.acquire(blocking=False):
            self._on_end(outcome)

    def __del__(self) -> None:
        self.close()


def closing(items: Iterator[T], close: Callable[[], object]) -> ClosingIterator[T]:
    """``items``, then ``close()`` however the iteration ends."""
    return ClosingIterator(items, lambda _outcome: close())
