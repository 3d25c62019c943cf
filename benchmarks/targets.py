"""The benchmark's targets: the rows of ``targets.toml``, judged by one function.

A target is a ratio of two measurements of the same run, same store and same
case, and a bound: its ``rule`` reads ``MODE.FIGURE / MODE.FIGURE OP BOUND``,
e.g. ``flightlab.rows_per_second / feast.rows_per_second >= 5``
(``targets.toml`` says what each field of a row means). Each line it gives is
``MET``, ``MISSED``, ``n/a`` (not measured, or measured off the target's
conditions) or ``info`` (printed for contrast). A measurement that failed
misses its target; a baseline that failed leaves no ratio (or, with
``failed_baseline_met``, meets it: ours answered, the baseline did not).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MB = 1e6
NOISE = 1.02  # a miss by less than this factor is flagged as within noise
TABLE = Path(__file__).with_name("targets.toml")


@dataclass(frozen=True)
class Target:
    """A row of ``targets.toml``."""

    group: str
    label: str
    rule: str
    shows: str = ""
    kind: str = "results"
    stores: tuple[str, ...] = ()
    cases: tuple[str, ...] = ()
    stand_in: bool = False
    min_result_bytes: float = 0
    caveat: tuple[str, ...] = ()
    contrast: bool = False
    failed_baseline_met: bool = False

    def __post_init__(self) -> None:  # a malformed row fails before the run, not after it
        _Rule.parse(self.rule)
        if self.kind not in ("results", "concurrency", "latency"):
            raise ValueError(f"{self.label!r}: no measurements of kind {self.kind!r}")


def load_targets(path: Path = TABLE) -> list[Target]:
    rows = tomllib.loads(path.read_text())["target"]
    return [
        Target(**{k: tuple(v) if isinstance(v, list) else v for k, v in r.items()}) for r in rows
    ]


def evaluate_targets(document: dict[str, Any], targets: list[Target] | None = None) -> list[dict]:
    """Every target's lines, in the table's order: each with its ratio
    (``value``), bound, figures (``detail``) and verdict (``met``: None for
    n/a and info)."""
    targets = load_targets() if targets is None else targets
    return [line for target in targets for line in _judge(target, document)]


@dataclass(frozen=True)
class _Rule:
    mode: str
    figure: str
    base: str
    base_figure: str
    op: str
    bound: float

    @classmethod
    def parse(cls, rule: str) -> _Rule:
        ratio, op, bound = rule.rsplit(" ", 2)
        if op not in ("<=", ">="):
            raise ValueError(f"a rule compares with <= or >=: {rule!r}")
        (mode, figure), (base, base_figure) = (s.rsplit(".", 1) for s in ratio.split(" / "))
        return cls(mode, figure, base, base_figure, op, float(bound))

    def met(self, value: float) -> bool:
        return value >= self.bound if self.op == ">=" else value <= self.bound


def _judge(target: Target, document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    rule = _Rule.parse(target.rule)
    records = document.get(target.kind, [])
    for store in target.stores or sorted({r["store"] for r in records}):
        measured = sorted({r["case"] for r in records if r["store"] == store}, key=case_key)
        rows_cases = [c for c in measured if c.startswith("rows:")]
        for case in target.cases or measured:
            judged = True
            if target.stand_in and case not in measured and rows_cases:
                case, judged = rows_cases[-1], False
            ours, theirs = (_find(records, store, case, m) for m in (rule.mode, rule.base))
            if not target.cases and (ours is None or theirs is None):
                continue
            if (ours or {}).get("result_bytes", 0) < target.min_result_bytes:
                continue
            line = {
                "target": target.label.format_map(_Figures(ours or {})),
                "group": target.group,
                "store": store,
                "case": case,
                "threshold": rule.bound,
                "direction": rule.op,
                **_verdict(target, rule, ours or {}, theirs or {}),
            }
            if not judged:
                off = f"indicative only: measured at {case_label(case)}, judged at "
                off += case_label(target.cases[0])
                line.update(met=None, detail="; ".join(filter(None, [line["detail"], off])))
            if target.contrast:
                line.update(met=None, contrast=True)
            yield line


def _verdict(target: Target, rule: _Rule, ours: dict, theirs: dict) -> dict[str, Any]:
    """The ratio, the figures behind it and whether it is met."""
    a, b = ours.get(rule.figure), theirs.get(rule.base_figure)
    value = a / b if a is not None and b else None
    ours_failed, theirs_failed = _failure(ours), _failure(theirs)
    if ours_failed:
        met, detail = False, f"{rule.mode}: {ours_failed}"
    elif a is None:
        met, detail = None, ""
    elif theirs_failed:
        met, value, detail = None, None, f"{rule.base}: {theirs_failed}"
        if target.failed_baseline_met:
            unit = re.search(r"{of:(\w*)}", target.shows)
            took = format(_Figure(a), unit[1] if unit else "")
            met, detail = True, f"{rule.mode} answered every call ({rule.figure} {took}); {detail}"
    elif value is None:
        met, detail = None, ""
    else:
        met, detail = rule.met(value), target.shows.format_map(_Figures(ours, of=a, over=b))
        field, note = target.caveat or ("", "")
        if field and not all(ours.get(field) or [False]):
            detail += f" - {note}"
    errors = ours.get("call_errors") or []
    if errors and not ours_failed:
        detail += f"; {len(errors)} call(s) failed: {errors[0][:120]}"
    return {"value": value, "met": met, "detail": detail}


def _failure(record: dict) -> str | None:
    """Why a measurement failed (it raised, or some of its calls failed)."""
    if "error" in record:
        return record["error"]
    if record.get("failed_calls"):
        first = record["call_errors"][0]
        return f"{record['failed_calls']} of {record['calls']} calls failed ({first})"
    return None


def _find(records: list[dict], store: str, case: str, mode: str) -> dict | None:
    for record in records:
        if (record["store"], record["case"], record["mode"]) == (store, case, mode):
            return record
    return None


class _Figure:
    """A figure, formatted by its unit (the format spec)."""

    def __init__(self, value: Any):
        self.value = value

    def __format__(self, unit: str) -> str:
        v = self.value
        if v is None:
            return "-"
        units = {
            "MB": lambda: f"{v / MB:.0f} MB",
            "s": lambda: f"{v:.2f}s",
            "ms": lambda: f"{v * 1e3:.0f} ms",
            "rate": lambda: rate(v),
            "count": lambda: f"{sum(v)}/{len(v)}",
            "sum": lambda: str(sum(v)),
        }
        return units[unit]() if unit in units else format(v, unit)


class _Figures(dict):
    """A record's figures for ``str.format_map``; one it lacks prints as ``-``."""

    def __getitem__(self, key: str) -> _Figure:
        return _Figure(self.get(key))


def rows_of(case: str) -> int | None:
    return int(case.split(":")[1]) if case.startswith("rows:") else None


def case_key(case: str) -> tuple[int, int]:
    """Rows cases by size, then MNIST."""
    rows = rows_of(case)
    return (1, 0) if rows is None else (0, rows)


def size_label(rows: int) -> str:
    """1000 -> 1k, 1000000 -> 1M, 1500 -> 1.5k."""
    if rows >= 1_000_000:
        return f"{rows / 1_000_000:g}M"
    return f"{rows / 1_000:g}k" if rows >= 1_000 else str(rows)


def case_label(case: str) -> str:
    rows = rows_of(case)
    return "MNIST" if rows is None else size_label(rows)


def rate(value: float | None) -> str:
    """Rows per second, short: 1.23M, 456k."""
    if not value:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    return f"{value / 1e3:.0f}k" if value >= 1e3 else f"{value:.0f}"


def target_line(t: dict[str, Any]) -> str:
    """A target's printed line."""
    verdict = {True: "MET   ", False: "MISSED", None: "n/a   "}[t["met"]]
    if t.get("contrast"):
        verdict = "info  "
    if t["value"] is not None:
        value = f"{t['value']:.2f}"
    else:
        value = "no ratio" if t["met"] is not None else "not measured"
    detail = f" ({t['detail']})" if t["detail"] else ""
    if t["met"] is False and t["value"] is not None:
        if t["direction"] == ">=":
            close = t["value"] * NOISE >= t["threshold"]
        else:
            close = t["value"] <= NOISE * t["threshold"]
        if close:
            detail += " - within 2% of the threshold: noise"
    return f"  {verdict} {t['target']}: {t['store']} {case_label(t['case'])}: {value}{detail}"
