"""The benchmark's targets: the rows of ``targets.toml``, judged by one function.

A target is a ratio of two measurements of the same run, same store (or the
store ``base_store`` names) and same case, and a bound: its ``rule`` reads
``MODE.FIGURE / MODE.FIGURE OP BOUND``, e.g.
``flightlab.rows_per_second / feast.rows_per_second >= 5``, or a figure and a
bound, ``MODE.FIGURE OP BOUND`` (``targets.toml`` says what each field of a row
means). Each line it gives is ``MET``, ``MISSED``, ``n/a`` (not measured, or
measured off the target's conditions) or ``info`` (printed for contrast). A
measurement that failed misses its target; a baseline that failed leaves no
ratio (or, with ``failed_baseline_met``, meets it: ours answered, the baseline
did not). A baseline stopped at its time cap (``capped``: it did not finish in
that many seconds) bounds the ratio: where the bound alone meets the target,
it is met (printed ``> 62.10``), else it is ``n/a``.
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
    base_store: str = ""

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
    base: str | None  # None: the figure itself is compared with the bound
    base_figure: str | None
    op: str
    bound: float

    @classmethod
    def parse(cls, rule: str) -> _Rule:
        ratio, op, bound = rule.rsplit(" ", 2)
        if op not in ("<=", ">="):
            raise ValueError(f"a rule compares with <= or >=: {rule!r}")
        sides = [s.rsplit(".", 1) for s in ratio.split(" / ")]
        if len(sides) > 2 or any(len(side) != 2 for side in sides):
            raise ValueError(f"a rule reads MODE.FIGURE [/ MODE.FIGURE] OP BOUND: {rule!r}")
        (mode, figure), (base, base_figure) = sides[0], (sides[1:] or [(None, None)])[0]
        return cls(mode, figure, base, base_figure, op, float(bound))

    def met(self, value: float) -> bool:
        return value >= self.bound if self.op == ">=" else value <= self.bound


def _judge(target: Target, document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    rule = _Rule.parse(target.rule)
    records = document.get(target.kind, [])
    # The stores the run was asked for (a baseline of another store, measured
    # for a base_store target, is not judged for its own targets).
    asked = set(document.get("meta", {}).get("args", {}).get("stores") or ())
    asked = asked or {r["store"] for r in document.get("results", [])}
    for store in target.stores or sorted({r["store"] for r in records}):
        if store not in asked:
            continue
        measured = sorted({r["case"] for r in records if r["store"] == store}, key=case_key)
        for named in target.cases or measured:
            case, judged = named, True
            # The largest rows case of the same kind (variant) stands in.
            alike = [c for c in measured if rows_of(c) and variant_of(c) == variant_of(named)]
            if target.stand_in and named not in measured and alike:
                case, judged = alike[-1], False
            ours = _find(records, store, case, rule.mode)
            theirs = ours if rule.base is None else None
            if rule.base is not None:
                theirs = _find(records, target.base_store or store, case, rule.base)
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
                off += case_label(named)
                line.update(met=None, detail="; ".join(filter(None, [line["detail"], off])))
            if target.contrast:
                line.update(met=None, contrast=True)
            yield line


def _verdict(target: Target, rule: _Rule, ours: dict, theirs: dict) -> dict[str, Any]:
    """The ratio, the figures behind it and whether it is met."""
    a = ours.get(rule.figure)
    b = 1.0 if rule.base is None else theirs.get(rule.base_figure)
    value = a / b if a is not None and b else None
    ours_failed, theirs_failed = _failure(ours), _failure(theirs)
    if ours_failed:
        met, detail = False, f"{rule.mode}: {ours_failed}"
    elif a is None:
        met, detail = None, ""
    elif theirs.get("capped") and _capped_bound(rule, ours, theirs) is not None:
        return _capped_verdict(rule, ours, theirs)
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
    verdict = {"value": value, "met": met, "detail": detail}
    if rule.base is None and value is not None:  # a figure, not a ratio: in its unit
        unit = re.search(r"{of:(\w*)}", target.shows)
        verdict["value_text"] = format(_Figure(value), unit[1] if unit else ".2f")
    return verdict


def _capped_bound(rule: _Rule, ours: dict, theirs: dict) -> tuple[str, float] | None:
    """What a baseline that did not finish in ``capped`` seconds tells of the
    ratio: (``>`` or ``<``, the bound), for a time or a rate."""
    cap, a = theirs["capped"], ours[rule.figure]
    if rule.base_figure == "median":  # it took longer than the cap
        return "<", a / cap
    if rule.base_figure == "rows_per_second" and ours.get("result_rows"):
        return ">", a / (ours["result_rows"] / cap)  # it went slower than all rows in the cap
    return None


def _capped_verdict(rule: _Rule, ours: dict, theirs: dict) -> dict[str, Any]:
    side, value = _capped_bound(rule, ours, theirs)
    settles = (side == ">") == (rule.op == ">=") and rule.met(value)
    detail = f"{rule.base} {theirs['error']}: the ratio is {side} {value:.2f}"
    if not settles:
        detail += ", which does not settle it"
    return {"value": value if settles else None, "met": True if settles else None,
            "detail": detail, "bounded": side}  # fmt: skip


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


def variant_of(case: str) -> str:
    """A rows case's kind: ``rows:N:VARIANT`` (the postgres store's cases,
    each through another feature view) -> ``VARIANT``; else ``""``."""
    return case.split(":", 2)[2] if case.count(":") >= 2 else ""


# How a variant is printed.
VARIANT_LABELS = {"nottl": "no TTL", "ttl30d": "TTL 30d", "src10m": "on a 10M-row source"}


def case_key(case: str) -> tuple[int, int, str]:
    """Rows cases by size (then variant), then MNIST."""
    rows = rows_of(case)
    return (1, 0, "") if rows is None else (0, rows, variant_of(case))


def size_label(rows: int) -> str:
    """1000 -> 1k, 1000000 -> 1M, 1500 -> 1.5k."""
    if rows >= 1_000_000:
        return f"{rows / 1_000_000:g}M"
    return f"{rows / 1_000:g}k" if rows >= 1_000 else str(rows)


def case_label(case: str) -> str:
    rows = rows_of(case)
    if rows is None:
        return "MNIST"
    kind = variant_of(case)
    return f"{size_label(rows)} {VARIANT_LABELS.get(kind, kind)}".strip()


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
    if t.get("value_text"):
        value = t["value_text"]
    elif t["value"] is not None:
        value = f"{t.get('bounded', '')} {t['value']:.2f}".strip()
    else:
        value = "no ratio" if t["met"] is not None or t.get("bounded") else "not measured"
    detail = f" ({t['detail']})" if t["detail"] else ""
    if t["met"] is False and t["value"] is not None:
        if t["direction"] == ">=":
            close = t["value"] * NOISE >= t["threshold"]
        else:
            close = t["value"] <= NOISE * t["threshold"]
        if close:
            detail += " - within 2% of the threshold: noise"
    return f"  {verdict} {t['target']}: {t['store']} {case_label(t['case'])}: {value}{detail}"
