"""How flightlab's engine runs, and when it answers instead of Feast's store."""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from flightlab.engine.postgres.settings import PostgresSettings


class EngineMode(enum.Enum):
    """Who answers retrievals (``--engine``).

    ``auto``: flightlab's engine wherever it gives the store's own answers (a
    repo on Feast's duckdb store, parquet sources; a repo on its postgres
    store, PostgreSQL sources), Feast's store elsewhere.
    ``flightlab``: the engine wherever it can read the sources, also on the
    dask (``file``) store, whose answers differ (see the README).
    ``feast``: always the repo's Feast offline store.
    """

    AUTO = "auto"
    FLIGHTLAB = "flightlab"
    FEAST = "feast"


# The offline store types whose answers the engine reproduces (``auto``) and
# those it may replace when asked to (``flightlab``).
SAME_ANSWER_STORES = ("duckdb",)
REPLACEABLE_STORES = ("duckdb", "file", "dask")


@dataclass(frozen=True)
class EngineSettings:
    """Resources of one engine request: each runs on its own DuckDB database.

    ``threads``: DuckDB worker threads per request (None: one per core).
    ``memory_limit``: DuckDB's limit per request, e.g. ``"2GB"`` (None:
    DuckDB's default, 80 % of RAM; a server sets :func:`default_memory_limit`
    instead). The request's uploaded entity rows are held outside it.
    ``spill_dir``: where a join over the limit
    spills (None: a folder under the system's temporary directory).
    ``spill_max_size``: how much one request may spill, e.g. ``"20GB"``
    (None: DuckDB's default, 90 % of the free space of the spill folder's
    disk); a request over it fails with a resource-exhausted error naming
    the folder.
    ``postgres``: how it reads PostgreSQL sources (pool, timeout, plans).
    """

    mode: EngineMode = EngineMode.AUTO
    threads: int | None = None
    memory_limit: str | None = None
    spill_dir: Path | None = None
    spill_max_size: str | None = None
    postgres: PostgresSettings = field(default_factory=PostgresSettings)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError("engine threads must be at least 1")


# DuckDB's memory units: KB, MB, GB, TB are powers of 1000; KiB ... TiB of 1024.
_UNITS = {"": 1, "b": 1, "byte": 1, "bytes": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6}
_UNITS |= {"g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20}
_UNITS |= {"gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
# The share of the machine's memory the requests that run at once may use
# together (DuckDB's own default for one database).
MACHINE_SHARE = 0.8


def size_in_bytes(text: str) -> int | None:
    """A DuckDB memory size (``2GB``, ``1.5GiB``, ``500MB``) in bytes; None
    for a form DuckDB may read but this does not."""
    match = _SIZE.match(text)
    unit = _UNITS.get(match.group(2).lower()) if match else None
    return None if unit is None else int(float(match.group(1)) * unit)


def default_memory_limit(workers: int) -> str:
    """The memory limit per request when none is set: ``MACHINE_SHARE`` of
    the machine's memory (or of the container's, where its cgroup caps it
    lower) split among the ``workers`` that may run requests at once, so
    that together they stay within it instead of each taking 80 % of RAM."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    capped = _cgroup_memory_limit()
    if capped is not None:
        total = min(total, capped)
    # In MB, as an operator reads it in errors and logs.
    return f"{int(total * MACHINE_SHARE / max(workers, 1)) // 10**6}MB"


def _cgroup_memory_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None
