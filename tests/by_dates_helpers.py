"""Cases for the entity-less retrieval tests (``test_engine_by_dates.py``).

A case is the generated repo of ``test_engine_differential`` (one to three
views over parquet files on k1, k2 or no entity, TTLs, created timestamps,
field mappings, a feature service with aliases and a join key map, an
on-demand view) asked by dates instead of entity rows. Its sources are made
safe from what the dask store leaves undefined: no two rows of a view share
an event timestamp, at most one has none. Each view also has a feature
``at{i}``, a copy of its event timestamp, so that a test can see the order
the dask store sorts rows in (by the last view's event timestamp).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
from feast import FeatureStore, FeatureView, Field, FileSource
from feast.types import UnixTimestamp
from hypothesis import strategies as st
from test_engine_differential import (
    T0,
    ViewCase,
    case_view,
    register_case,
    source_frame,
    source_options,
    view_cases,
)

FEATURES = ("f_int", "f_float", "f_str", "at")
DATES = ("both", "end", "late_start", "start", "neither")


@dataclass(frozen=True)
class DatesCase:
    views: tuple[ViewCase, ...]
    null_timestamp: tuple[bool, ...]  # per view: its first row has no event timestamp
    empty: tuple[bool, ...]  # per view: its source has no rows
    end: int  # the end date, in seconds after T0
    # "end", "both" (a start an hour before the end), "late_start" (a start a
    # day after the end), "start" (only a start: the end is now), "neither"
    dates: str
    full_feature_names: bool
    through_service: bool
    join_key_map: bool  # the service maps k1 to other_k1
    on_demand: str  # "none", "with_input", "alone" (as in test_engine_differential)


dates_cases = st.builds(
    DatesCase,
    # One to three views, mostly several: the cross product is where rules meet.
    views=st.sampled_from([1, 2, 2, 3]).flatmap(
        lambda n: st.lists(view_cases(), min_size=n, max_size=n).map(tuple)
    ),
    null_timestamp=st.lists(st.sampled_from([False, False, True]), min_size=3, max_size=3).map(
        tuple
    ),
    empty=st.lists(st.sampled_from([False] * 7 + [True]), min_size=3, max_size=3).map(tuple),
    end=st.integers(-1, 12),
    dates=st.sampled_from(["end", "end", "both", "both", "late_start", "start", "neither"]),
    full_feature_names=st.booleans(),
    through_service=st.booleans(),
    join_key_map=st.booleans(),
    on_demand=st.sampled_from(["none", "with_input", "alone"]),
)


def a_dates_case(
    views: list[ViewCase],
    end: int = 0,
    dates: str = "end",
    full_names: bool = False,
    service: bool = False,
    null_timestamp: tuple[bool, ...] = (),
    empty: tuple[bool, ...] = (),
    **more,
) -> DatesCase:
    assert dates in DATES
    return DatesCase(
        views=tuple(views),
        null_timestamp=null_timestamp + (False,) * (3 - len(null_timestamp)),
        empty=empty + (False,) * (3 - len(empty)),
        end=end,
        dates=dates,
        full_feature_names=full_names,
        through_service=service,
        join_key_map=more.get("join_key_map", False),
        on_demand=more.get("on_demand", "none"),
    )


def dates_of(case: DatesCase) -> dict[str, datetime]:
    end = T0 + timedelta(seconds=case.end)
    return {
        "end": {"end_date": end},
        "both": {"start_date": end - timedelta(hours=1), "end_date": end},
        "late_start": {"start_date": end + timedelta(days=1), "end_date": end},
        "start": {"start_date": T0},
        "neither": {},
    }[case.dates]


def ends_now(case: DatesCase) -> bool:
    return case.dates in ("start", "neither")


def shared_by_three(case: DatesCase) -> bool:
    """Whether a join key is in three views (the dask store's ValueError)."""
    keys = Counter(key for view in case.views for key in view.entities)
    return any(n >= 3 for n in keys.values())


# --- the repo a case builds ---------------------------------------------------------


def dates_frame(view: ViewCase, i: int, null_timestamp: bool, empty: bool) -> pd.DataFrame:
    frame = source_frame(view, i).drop_duplicates("ts").reset_index(drop=True)
    if null_timestamp:
        frame.loc[0, "ts"] = pd.NaT
    if empty:
        frame = frame.iloc[0:0]
    frame[f"at{i}"] = frame["ts"]
    return frame


def dates_view(name: str, case: DatesCase, i: int, data: Path) -> FeatureView:
    view = case.views[i]
    file = data / f"{name}.parquet"
    dates_frame(view, i, case.null_timestamp[i], case.empty[i]).to_parquet(file)
    source = FileSource(name=f"{name}_source", path=str(file), **source_options(view, i))
    return case_view(name, view, i, source, (Field(name=f"at{i}", dtype=UnixTimestamp),))


def apply_dates_case(store: FeatureStore, case: DatesCase, data: Path, n: int):
    """Register the case's objects; return what to ask for."""
    views = [dates_view(f"d{n}_v{i}", case, i, data) for i in range(len(case.views))]
    return register_case(store, case, views, f"d{n}", FEATURES, ("f_int", "f_str", "at"))


# --- comparing answers ----------------------------------------------------------------

_VIEW_COLUMN = re.compile(r"^(?:f_int|f_float|f_str|at)(\d+)$")


def last_view_order_column(names: list[str]) -> str | None:
    """The ``at`` column of the view joined last (the dask store sorts by its
    event timestamp), if the answer has it."""
    views = [int(m.group(1)) for n in names if (m := _VIEW_COLUMN.match(n.split("__")[-1]))]
    if not views:
        return None
    wanted = f"at{views[-1]}"
    return next((n for n in names if n.split("__")[-1] == wanted), None)


def assert_same_answer(
    expected: pa.Table,
    got: pa.Table,
    expected_frame: pd.DataFrame,
    case: DatesCase,
    started: datetime,
    who: str,
) -> None:
    """``got`` is the dask store's answer ``expected``: names, Arrow types,
    values, and row order where the dask store's order is defined (rows whose
    last view has one event timestamp come in no defined order: then the same
    rows, sorted alike); its pandas form is ``expected_frame``."""
    assert got.column_names == expected.column_names, who
    assert got.schema.remove_metadata().equals(expected.schema.remove_metadata()), (
        f"{who}:\n{got.schema.remove_metadata()}\n!=\n{expected.schema.remove_metadata()}"
    )
    if ends_now(case):
        # Each call's Feast took its own now (naive, local, read as UTC).
        earliest, latest = (t.replace(tzinfo=UTC) for t in (started, datetime.now()))
        stamps = got.column("event_timestamp").to_pylist()
        assert all(earliest <= t.to_pydatetime() <= latest for t in stamps), who
        got = got.set_column(0, "event_timestamp", expected.column("event_timestamp"))
    rows, expected_rows = got.to_pylist(), expected.to_pylist()
    order = last_view_order_column(expected.column_names)
    if rows != expected_rows:
        stamps = expected.column(order).to_pylist() if order else []
        tied = order is None or len(set(stamps)) < len(stamps)
        assert tied, f"{who}: rows differ\n{got.to_pandas()}\n{expected.to_pandas()}"
        assert sorted(map(repr, rows)) == sorted(map(repr, expected_rows)), who
        if order:
            got_stamps = [t is not None and t.timestamp() for t in got.column(order).to_pylist()]
            assert got_stamps == sorted(got_stamps), f"{who}: not sorted by {order}"
    frame = got.to_pandas()
    if ends_now(case):
        stamps = expected_frame["event_timestamp"].array
        frame["event_timestamp"] = pd.Series(stamps, index=frame.index)
    pd.testing.assert_frame_equal(_sorted(frame), _sorted(expected_frame), obj=who)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    keys = [repr(row) for row in frame.astype(object).itertuples(index=False)]
    order = sorted(range(len(frame)), key=keys.__getitem__)
    return frame.iloc[order].reset_index(drop=True)
