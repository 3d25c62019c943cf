"""Give memory back to the system after a large request.

Arrow's allocator (mimalloc or jemalloc) and glibc's malloc keep freed pages
for reuse, so a server's RSS stayed hundreds of MB up after one large request.
A release is scheduled shortly after such a request ends, once its tables are
no longer referenced (the handler's frame still holds them when it returns).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

import pyarrow as pa

logger = logging.getLogger(__name__)

# A call that moved more bytes than this (or failed) schedules a release.
LARGE_CALL_BYTES = 32 * 1024**2
_DELAY_SECONDS = 0.5

_lock = threading.Lock()
_pending: threading.Timer | None = None


def release_soon() -> None:
    """Release unused memory in a moment (once, however many calls ask)."""
    global _pending
    with _lock:
        if _pending is not None:
            return
        _pending = threading.Timer(_DELAY_SECONDS, _release)
        _pending.daemon = True
        _pending.start()


def release_now() -> None:
    pa.default_memory_pool().release_unused()
    _trim_malloc()


def _release() -> None:
    global _pending
    with _lock:
        _pending = None
    try:
        release_now()
    except Exception:  # never let housekeeping fail a server
        logger.debug("memory release failed", exc_info=True)


def _trim_malloc() -> None:
    # pandas and numpy allocate with malloc; glibc returns freed heap only on ask.
    name = ctypes.util.find_library("c")
    if name is None:
        return
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is not None:
        trim(0)
