"""Which entity rows a retrieval answers, and in what order: splits, samples,
shards and shuffles, decided on the server.

A :class:`RowSelection` travels as one JSON text parameter (``selection``) of
``get_historical_features``. Every choice it makes is a function of a row's
own values and a seed, never of where or when it runs, so the same selection
picks the same rows on any server, in any run:

- ``keys`` + ``lower``/``upper``: the rows whose hash of ``keys`` (seeded by
  ``seed``), as a fraction of the hash space, lies in ``[lower, upper)``.
  Splits with adjoining ranges are disjoint and together hold every row once;
  a shard ``i`` of ``n`` is the range ``[i/n, (i+1)/n)``.
- ``time_from``/``time_to``: the rows whose entity event timestamp lies in
  ``[time_from, time_to)`` (ISO 8601; either may be absent).
- ``sample``: of those, the fraction whose second hash (seeded anew) is below it.
- ``shuffle_seed``: the answer's rows in an order drawn from that seed and
  each row's keys and timestamp, instead of the engine's.
- ``shards``: the answer served as that many endpoints (one per worker of a
  distributed training job), endpoint ``i`` holding the rows whose hash lies
  in the ``i``-th of ``shards`` equal parts of ``[lower, upper)``; each is
  answered, and shuffled, on its own when its ticket is read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime

from flightlab.wire.flight_errors import MalformedParameterError

# The most endpoints a sharded answer is served in (workers of one job).
MAX_SHARDS = 1024


@dataclass(frozen=True)
class RowSelection:
    keys: tuple[str, ...] = ()
    seed: int = 0
    lower: float = 0.0
    upper: float = 1.0
    time_from: datetime | None = None
    time_to: datetime | None = None
    sample: float | None = None
    shuffle_seed: int | None = None
    shards: int | None = None

    def __post_init__(self) -> None:
        self._check_types()
        if not 0.0 <= self.lower <= self.upper <= 1.0:
            raise MalformedParameterError(
                f"a row selection's range must satisfy 0 <= lower <= upper <= 1, "
                f"not [{self.lower}, {self.upper})"
            )
        if (self.lower, self.upper) != (0.0, 1.0) and not self.keys:
            raise MalformedParameterError("a row selection by hash range needs key columns")
        if self.sample is not None and not 0.0 < self.sample <= 1.0:
            raise MalformedParameterError(f"a sample is a fraction in (0, 1], not {self.sample}")
        if self.sample is not None and not self.keys:
            raise MalformedParameterError("a sampled selection needs key columns")
        if self.shards is not None and not (self.keys and 1 <= self.shards <= MAX_SHARDS):
            raise MalformedParameterError(
                f"a sharded selection needs key columns and 1 to {MAX_SHARDS} shards, "
                f"not {self.shards}"
            )

    def _check_types(self) -> None:
        whole = {"seed": self.seed, "shuffle_seed": self.shuffle_seed, "shards": self.shards}
        for name, value in whole.items():
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise MalformedParameterError(
                    f"a row selection's {name} is a whole number, not {value!r}"
                )
        if self.seed is None:
            raise MalformedParameterError("a row selection's seed is a whole number, not None")
        if not all(isinstance(key, str) for key in self.keys):
            raise MalformedParameterError(f"a row selection's keys are column names: {self.keys}")

    def shard(self, index: int) -> RowSelection:
        """The selection of shard ``index`` of a sharded one: its part of the range."""
        if self.shards is None or not 0 <= index < self.shards:
            raise MalformedParameterError(f"no shard {index} of {self.shards}")
        width = self.upper - self.lower
        lower = self.lower + width * index / self.shards
        upper = (
            self.upper
            if index + 1 == self.shards
            else self.lower + width * (index + 1) / self.shards
        )
        return replace(self, lower=lower, upper=upper, shards=None)

    def to_json(self) -> str:
        values = asdict(self)
        for name in ("time_from", "time_to"):
            if values[name] is not None:
                values[name] = values[name].isoformat()
        values["keys"] = list(self.keys)
        return json.dumps(values, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RowSelection:
        try:
            values = json.loads(text)
            known = {f.name for f in fields(cls)}
            unknown = set(values) - known
            if unknown:
                raise MalformedParameterError(f"a row selection has no {sorted(unknown)}")
            values["keys"] = tuple(values.get("keys", ()))
            for name in ("time_from", "time_to"):
                if values.get(name) is not None:
                    values[name] = datetime.fromisoformat(values[name])
            return cls(**values)
        except (ValueError, TypeError, AttributeError) as exc:
            raise MalformedParameterError(
                f"malformed row selection {text[:200]!r}: {exc}"
            ) from None


def fraction_ranges(fractions: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Adjoining ``[lower, upper)`` ranges, in order, for named fractions
    summing to 1 (the last ends at exactly 1, whatever rounding did)."""
    total = sum(fractions.values())
    if not fractions or abs(total - 1.0) > 1e-9 or min(fractions.values()) < 0:
        raise ValueError(f"split fractions must be non-negative and sum to 1, not {fractions}")
    ranges, lower = {}, 0.0
    names = list(fractions)
    for i, name in enumerate(names):
        upper = 1.0 if i == len(names) - 1 else lower + fractions[name]
        ranges[name] = (lower, upper)
        lower = upper
    return ranges
