"""Whether the client of the request a worker thread is running has gone.

The worker pool (:mod:`flightlab.server.workers`) runs each request's work on
a thread of its own, and knows when the request's client went away (the RPC
thread saw it cancelled, or stopped reading). Work that waits rather than
computes (a request waiting for an identical one, :mod:`flightlab.dispatch.reuse`)
asks :func:`client_gone` between short waits, so a client that left does not
keep a worker for as long as the wait could last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_gone: ContextVar[Callable[[], bool]] = ContextVar("flightlab_client_gone", default=lambda: False)


def client_gone() -> bool:
    """Whether the client of the request this thread works for has gone."""
    return _gone.get()()


@contextmanager
def working_for(gone: Callable[[], bool]) -> Iterator[None]:
    """Run the block for a request whose client has gone once ``gone()``."""
    token = _gone.set(gone)
    try:
        yield
    finally:
        _gone.reset(token)
