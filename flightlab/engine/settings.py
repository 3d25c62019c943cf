"""How flightlab's engine runs, and when it answers instead of Feast's store."""

from __future__ import annotations

import enum
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
    DuckDB's default, 80 % of RAM). ``spill_dir``: where a join over the limit
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
