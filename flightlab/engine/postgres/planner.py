"""Which plan answers a retrieval: estimated per request from EXPLAIN, at no
data transfer.

- **pit** (plan A): the point-in-time join runs in PostgreSQL, one backward
  index probe per entity row and view. Its cost grows with the entity rows
  (``n``), not with the table.
- **fetch** (plan B): each view's window (rows in ``[earliest entity
  timestamp - TTL, latest]``, ``W``) is fetched into DuckDB, which joins.
  Its cost grows with ``W``.
- **seek**: plan B, where the rows at or before the earliest entity timestamp
  come from one probe per distinct key (``k``) instead of in full: what a
  view with no TTL, or entity rows over a narrow window, need.

PostgreSQL's EXPLAIN (no ANALYZE) gives the numbers that are not in the
entity rows: one probe's cost (an index descent costs about 5; a scan, which
makes plan A a scan per entity row, 100 or more), and each window's row
count and width. The constants (:class:`~.settings.PlanCosts`) turn them into
seconds; the cheapest estimate wins.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from flightlab.engine.postgres.connections import Session
from flightlab.engine.postgres.settings import AUTO, FETCH, PIT, SEEK, PostgresSettings
from flightlab.engine.postgres.source import timestamp_literal
from flightlab.engine.postgres.views import PgView
from flightlab.engine.reading import TimeWindow, sql_name, sql_string

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanChoice:
    plan: str  # pit, fetch or seek
    reason: str  # "estimated", or "--postgres-plan" when forced
    estimates: dict[str, float]  # seconds, by plan
    views: tuple[dict[str, Any], ...]  # what EXPLAIN said of each view
    seconds: float  # how long choosing took

    def describe(self) -> str:
        estimated = " ".join(f"{p}={s:.3f}s" for p, s in self.estimates.items())
        return f"plan={self.plan} ({self.reason}{': ' + estimated if estimated else ''})"


def choose(
    session: Session,
    views: list[PgView],
    entity_rows: pa.Table,
    timestamp: str,
    settings: PostgresSettings,
) -> PlanChoice:
    if settings.plan != AUTO:
        return PlanChoice(settings.plan, "--postgres-plan", {}, (), 0.0)
    started = time.perf_counter()
    n = entity_rows.num_rows
    bounds = pc.min_max(entity_rows.column(timestamp))
    earliest, latest = bounds["min"].as_py(), bounds["max"].as_py()
    if latest is None:
        return PlanChoice(PIT, "no entity timestamps", {}, (), 0.0)
    costs = settings.costs
    estimates = {PIT: 0.0, FETCH: costs.fetch_fixed_s + n * costs.entity_asof_s}
    estimates[SEEK] = estimates[FETCH]
    detail = []
    for view in views:
        keys = list(view.entity_columns)
        k = _distinct(entity_rows, keys)
        cost = _probe_cost(session, view, entity_rows, latest)
        ttl = timedelta(seconds=view.ttl_seconds) if view.ttl_seconds else None
        rows, width = _window(session, view, TimeWindow(earliest - ttl if ttl else None, latest))
        recent, _ = _window(session, view, TimeWindow(earliest, latest))
        indexed = cost < costs.indexed_probe_cost
        probe_s = costs.probe_s if indexed else costs.probe_s * cost / costs.cost_per_probe_s
        row_s = costs.window_row_s + width * costs.byte_s
        estimates[PIT] += n * (probe_s + width * costs.byte_s)
        estimates[FETCH] += rows * row_s
        if keys:
            seek_probe_s = costs.seek_probe_s if indexed else probe_s
            estimates[SEEK] += k * seek_probe_s + min(rows, recent + k) * row_s
        else:
            estimates[SEEK] += rows * row_s
        detail.append(
            {
                "view": view.name,
                "probe_cost": round(cost, 2),
                "window_rows": round(rows),
                "recent_rows": round(recent),
                "keys": k,
                "row_width": width,
            }
        )
    plan = min(estimates, key=estimates.__getitem__)
    rounded = {p: round(s, 4) for p, s in estimates.items()}
    return PlanChoice(plan, "estimated", rounded, tuple(detail), time.perf_counter() - started)


def _distinct(entity_rows: pa.Table, keys: list[str]) -> int:
    if not keys:
        return 1
    return entity_rows.select(keys).group_by(keys).aggregate([]).num_rows


def _explain(session: Session, sql: str) -> dict[str, Any]:
    cursor = session.cursor(copy=False)
    try:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql)
        plan = cursor.fetchone()[0]
    finally:
        cursor.close()
    if isinstance(plan, str):
        plan = json.loads(plan)
    return plan[0]["Plan"]


def _probe_cost(session: Session, view: PgView, entity_rows: pa.Table, latest: datetime) -> float:
    """EXPLAIN's cost of one plan-A probe: a key of the entity rows, at the
    latest entity timestamp."""
    conditions = []
    for source, entity in view.join_keys:
        values = entity_rows.column(entity).drop_null()
        value = values[0].as_py() if len(values) else None
        conditions.append(f"s.{sql_name(source)} = {_literal(value)}")
    ts = f"s.{sql_name(view.timestamp_column)}"
    conditions.append(f"{ts} <= {timestamp_literal(latest)}")
    if view.ttl_seconds:
        start = latest - timedelta(seconds=view.ttl_seconds)
        conditions.append(f"{ts} >= {timestamp_literal(start)}")
    order = [f"{ts} DESC"]
    if view.created_column:
        conditions.append(f"s.{sql_name(view.created_column)} IS NOT NULL")
        order.append(f"s.{sql_name(view.created_column)} DESC")
    sql = (
        f"SELECT 1 FROM {view.source.from_sql} AS s WHERE {' AND '.join(conditions)} "
        f"ORDER BY {', '.join(order)} FETCH FIRST 1 ROWS WITH TIES"
    )
    return float(_explain(session, sql)["Total Cost"])


def _window(session: Session, view: PgView, window: TimeWindow) -> tuple[float, int]:
    """EXPLAIN's row count and width of a plan-B fetch of ``window``."""
    sql = view.source.fetch_sql(
        session, view.columns, view.timestamp_column, window, view.created_column
    )
    plan = _explain(session, sql)
    return float(plan["Plan Rows"]), int(plan["Plan Width"])


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return f"'{value!r}'::float8"  # 'nan', 'inf', '-inf': PostgreSQL's spellings
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime):
        return timestamp_literal(value)
    return sql_string(str(value))
