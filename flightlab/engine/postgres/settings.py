"""How the engine reads PostgreSQL: the connection pool, the statement timeout,
and the planner's constants (see :mod:`~flightlab.engine.postgres.planner`).

Nothing here imports the ADBC driver: settings are read before anything runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# --postgres-plan: the planner's own choice, or one plan for every request.
AUTO = "auto"
PIT = "pit"  # plan A: the point-in-time join runs in PostgreSQL
FETCH = "fetch"  # plan B: fetch the window, DuckDB's ASOF join
SEEK = "seek"  # plan B, rows before the window taken by one index probe per key
PLANS = (AUTO, PIT, FETCH, SEEK)


@dataclass(frozen=True)
class PlanCosts:
    """The planner's cost model, in seconds (fitted on 2 shared cores, warm
    cache, a 1M-row table: see the README's engine section).

    Plan A (``pit``) costs ``n * (probe_s + width * byte_s)`` per view; plan
    B (``fetch``) ``fetch_fixed_s + n * entity_asof_s + W * (window_row_s +
    width * byte_s)``; ``seek`` as B with ``W`` cut to the rows after the
    earliest entity timestamp plus one row per key, and ``seek_probe_s`` per
    key. ``n``: entity rows, ``W``: rows in the view's window, ``width``:
    PostgreSQL's row width estimate in bytes. A probe whose EXPLAIN cost is
    ``indexed_probe_cost`` or more is no index descent (a scan per entity
    row): plan A's probe then costs ``probe_s * cost / cost_per_probe_s``
    (EXPLAIN's cost units per ``probe_s``).
    """

    probe_s: float = 3.5e-6
    byte_s: float = 0.04e-6
    window_row_s: float = 0.3e-6
    entity_asof_s: float = 0.5e-6
    seek_probe_s: float = 5e-6
    fetch_fixed_s: float = 0.15
    indexed_probe_cost: float = 100.0
    cost_per_probe_s: float = 8.0

    @classmethod
    def parse(cls, text: str) -> PlanCosts:
        """``"probe_s=4e-6,fetch_fixed_s=0.2"``: the named constants changed."""
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = item.partition("=")
            name = name.strip()
            if name not in names:
                raise ValueError(f"unknown planner constant {name!r}; known: {sorted(names)}")
            try:
                values[name] = float(value)
            except ValueError:
                raise ValueError(f"planner constant {name}: {value!r} is not a number") from None
            if values[name] < 0:
                raise ValueError(f"planner constant {name} must not be negative")
        return cls(**values)


@dataclass(frozen=True)
class PostgresSettings:
    """``pool_size``: connections the server opens to one offline store's
    database at most (requests beyond it wait up to ``pool_wait`` seconds).
    ``statement_timeout``: seconds any one query may run (None: no limit).
    ``plan``: ``auto`` (the planner chooses per request) or one of ``pit``,
    ``fetch``, ``seek``. ``application_name``: what ``pg_stat_activity``
    shows for the server's sessions."""

    pool_size: int = 4
    pool_wait: float = 60.0
    statement_timeout: float | None = None
    plan: str = AUTO
    costs: PlanCosts = field(default_factory=PlanCosts)
    application_name: str = "flightlab"

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ValueError("the PostgreSQL pool size must be at least 1")
        if self.plan not in PLANS:
            raise ValueError(f"unknown PostgreSQL plan {self.plan!r}; one of {PLANS}")
        if self.statement_timeout is not None and self.statement_timeout <= 0:
            raise ValueError("the statement timeout must be positive (None: no limit)")
