"""flightlab's engine against Feast's duckdb store, on generated repos.

Each case is a small real Feast repo made up by hypothesis (fixed seed,
bounded examples): one to three feature views over parquet files on one or
two entities (or none), TTLs (none, zero, short, with entity timestamps
exactly on the boundary), created-timestamp ties, field mappings, feature
services whose projections alias views and map join keys, an on-demand view,
duplicate entity rows, unknown keys, an extra column and entity timestamps
in other zones. The same retrieval is asked through a flightlab server, with
flightlab's client and with Feast's stock ``type: remote`` client (and, for a
list of references, a bare wire request), and must equal the local duckdb
store's answer: rows, values, names and dtypes; the engine, not Feast's
store, must have answered. Explicit examples pin the cases a bounded search
may miss: aliases with a join key map, TTL boundaries, TTL 0, created-
timestamp ties, an on-demand view asked for without its input. Pulls, and
sources that are a folder of parquet files or a path relative to the repo,
are compared the same way.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource
from feast.data_format import ParquetFormat
from feast.data_source import DataSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String
from feast.value_type import ValueType
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from offline_helpers import (
    arrow,
    assert_same_rows,
    both_clients,
    engine_answers,
    make_repo,
    offline_store_of,
)

from flightlab.client.transport import OfflineFlightClient
from flightlab.server import OfflineServer
from flightlab.wire import protocol

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
K1 = Entity(name="k1", join_keys=["k1"], value_type=ValueType.INT64)
K2 = Entity(name="k2", join_keys=["k2"], value_type=ValueType.STRING)
TTLS = [None, timedelta(0), timedelta(seconds=3), timedelta(days=1)]
_names = itertools.count()


@dataclass(frozen=True)
class ViewCase:
    entities: tuple[str, ...]  # join keys: (), ("k1",) or ("k1", "k2")
    ttl: timedelta | None
    created: bool  # a created-timestamp column, with event-timestamp ties
    mapped: bool  # the source names the float feature "raw_f"
    rows: tuple[tuple[int, str, int, int | None, float, str | None], ...]


@dataclass(frozen=True)
class Case:
    views: tuple[ViewCase, ...]
    entity_rows: tuple[tuple[int, str, int], ...]  # k1, k2, seconds after T0
    zone: str  # the entity timestamps' time zone ("naive": none)
    full_feature_names: bool
    through_service: bool  # features from a feature service with aliases
    join_key_map: bool  # the service maps k1 to the entity column other_k1
    # "none"; "with_input": an on-demand view and the feature it reads are
    # asked for; "alone": the view without its input, which the plan adds.
    on_demand: str


def view_cases() -> st.SearchStrategy[ViewCase]:
    row = st.tuples(
        st.integers(0, 3),  # k1
        st.sampled_from(["a", "b"]),  # k2
        st.integers(0, 8),  # seconds after T0: a small grid, so ties happen
        st.one_of(st.none(), st.integers(-5, 5)),  # a nullable integer feature
        st.floats(-10, 10, allow_nan=False),
        st.one_of(st.none(), st.sampled_from(["x", "y"])),
    )
    return st.builds(
        ViewCase,
        entities=st.sampled_from([(), ("k1",), ("k1", "k2")]),
        ttl=st.sampled_from(TTLS),
        created=st.booleans(),
        mapped=st.booleans(),
        rows=st.lists(row, min_size=1, max_size=12).map(tuple),
    )


cases = st.builds(
    Case,
    views=st.lists(view_cases(), min_size=1, max_size=3).map(tuple),
    entity_rows=st.lists(
        st.tuples(st.integers(0, 4), st.sampled_from(["a", "b", "c"]), st.integers(-1, 12)),
        min_size=1,
        max_size=10,
    ).map(lambda rows: tuple(rows + rows[:2])),  # duplicate entity rows too
    zone=st.sampled_from(["UTC", "naive", "America/New_York", "Asia/Kolkata"]),
    full_feature_names=st.booleans(),
    through_service=st.booleans(),
    join_key_map=st.booleans(),
    on_demand=st.sampled_from(["none", "with_input", "alone"]),
)


# --- the repo a case builds ------------------------------------------------------


def source_frame(view: ViewCase, i: int) -> pd.DataFrame:
    rows = view.rows
    if not view.created:
        # Without a created timestamp, which of two rows with one key and one
        # event timestamp wins is undefined: keep the first of each.
        # (A view without entities joins on time alone: its key is the time.)
        width = len(view.entities)
        firsts = {(*r[:width], r[2]): r for r in reversed(rows)}
        rows = tuple(r for r in rows if firsts[(*r[:width], r[2])] is r)
    frame = pd.DataFrame(
        {
            "k1": pd.Series([r[0] for r in rows], dtype="int64"),
            "k2": pd.Series([r[1] for r in rows], dtype="object"),
            "ts": pd.Series(
                [T0 + timedelta(seconds=r[2]) for r in rows], dtype="datetime64[us, UTC]"
            ),
            f"f_int{i}": pd.Series([r[3] for r in rows], dtype="Int64"),
            f"raw_f{i}" if view.mapped else f"f_float{i}": pd.Series(
                [r[4] for r in rows], dtype="float64"
            ),
            f"f_str{i}": pd.Series([r[5] for r in rows], dtype="object"),
        }
    )
    if view.created:
        # Distinct created timestamps, in an order unrelated to the rows'.
        created = [T0 + timedelta(minutes=(7 * i) % 13) for i in range(len(rows))]
        frame["created"] = pd.Series(created, dtype="datetime64[us, UTC]")
    return frame


def feature_view(
    name: str, view: ViewCase, data: Path, i: int = 0, layout: str = "file"
) -> FeatureView:
    """A view whose features are named f_int{i}, f_float{i}, f_str{i}. Its
    source (``layout``) is one parquet file named by its absolute path, a
    folder of three parquet files, or one file named relative to the repo."""
    path = source_path(source_frame(view, i), data / name, layout)
    source = FileSource(
        name=f"{name}_source",
        path=path,
        # A folder's name does not say what its files are.
        file_format=ParquetFormat() if layout == "folder" else None,
        **source_options(view, i),
    )
    return case_view(name, view, i, source)


def source_options(view: ViewCase, i: int) -> dict:
    """The source arguments a case's view sets, whatever the source type."""
    return {
        "timestamp_field": "ts",
        "created_timestamp_column": "created" if view.created else "",
        "field_mapping": {f"raw_f{i}": f"f_float{i}"} if view.mapped else None,
    }


def case_view(
    name: str, view: ViewCase, i: int, source: DataSource, more: tuple[Field, ...] = ()
) -> FeatureView:
    """The case's view ``i`` over ``source``: f_int{i}, f_float{i}, f_str{i}, then ``more``."""
    return FeatureView(
        name=name,
        entities=[{"k1": K1, "k2": K2}[key] for key in view.entities],
        ttl=view.ttl,
        schema=[
            Field(name=f"f_int{i}", dtype=Int64),
            Field(name=f"f_float{i}", dtype=Float64),
            Field(name=f"f_str{i}", dtype=String),
            *more,
        ],
        source=source,
    )


def source_path(frame: pd.DataFrame, where: Path, layout: str) -> str:
    if layout == "folder":
        # Rows dealt round-robin: rows that tie on one key land in different files.
        where.mkdir()
        for part in range(3):
            frame.iloc[part::3].to_parquet(where / f"part-{part}.parquet")
        return str(where)
    file = where.with_suffix(".parquet")
    frame.to_parquet(file)
    if layout == "relative":
        return f"{file.parent.name}/{file.name}"  # data/NAME.parquet
    return str(file)


def doubling_view(name: str, source: FeatureView) -> object:
    @on_demand_feature_view(
        name=name, sources=[source], schema=[Field(name="doubled", dtype=Float64)]
    )
    def doubled(inputs: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"doubled": inputs["f_float0"] * 2})

    return doubled


def entity_frame(case: Case) -> pd.DataFrame:
    stamps = pd.Series(
        [T0 + timedelta(seconds=s) for _, _, s in case.entity_rows], dtype="datetime64[us, UTC]"
    )
    if case.zone == "naive":
        stamps = stamps.dt.tz_localize(None)
    else:
        stamps = stamps.dt.tz_convert(case.zone)
    k1 = [k for k, _, _ in case.entity_rows]
    return pd.DataFrame(
        {
            "row_id": range(len(case.entity_rows)),
            "k1": pd.Series(k1, dtype="int64"),
            "other_k1": pd.Series([k + 1 for k in k1], dtype="int64"),
            "k2": [k for _, k, _ in case.entity_rows],
            "event_timestamp": stamps,
            "extra": [f"e{i}" for i in range(len(case.entity_rows))],
        }
    )


def apply_case(store: FeatureStore, case: Case, data: Path) -> list | FeatureService:
    """Register the case's objects; return what to ask for."""
    n = next(_names)
    views = [feature_view(f"c{n}_v{i}", v, data, i) for i, v in enumerate(case.views)]
    return register_case(store, case, views, f"c{n}", ("f_int", "f_float", "f_str"))


def register_case(
    store: FeatureStore,
    case: Case,
    views: list[FeatureView],
    prefix: str,
    features: tuple[str, ...],
    projected: tuple[str, ...] | None = None,
) -> list | FeatureService:
    """Apply the entities, ``views`` (each with ``features``, numbered by the
    view) and what the case asks of them: a feature service projecting the
    first view whole and the others to ``projected`` (the first and last
    feature by default), under aliases, mapping k1 where asked; or references,
    with an on-demand view over the first. Return what to ask for."""
    projected = projected or (features[0], features[-1])
    objects: list = [K1, K2, *views]
    if case.through_service:
        projections = []
        for i, view in enumerate(views):
            projection = view.with_name(f"{prefix}_alias{i}")
            if case.join_key_map and "k1" in case.views[i].entities:
                projection = projection.with_join_key_map({"k1": "other_k1"})
            projections.append(projection[[f"{f}{i}" for f in projected]] if i else projection)
        service = FeatureService(name=f"{prefix}_service", features=projections)
        objects.append(service)
        store.apply(objects)
        return service
    asked = [
        f"{view.name}:{f}{i}"
        for i, view in enumerate(views)
        for f in features
        if not (i == 0 and case.on_demand == "alone")
    ]
    if case.on_demand != "none":
        objects.append(doubling_view(f"{prefix}_doubled", views[0]))
        asked.append(f"{prefix}_doubled:doubled")
    store.apply(objects)
    return asked


# --- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated_repo(tmp_path_factory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("differential").resolve())
    return repo


@pytest.fixture(scope="module")
def local(generated_repo) -> FeatureStore:
    return FeatureStore(repo_path=str(generated_repo))


@pytest.fixture(scope="module")
def engine_server(generated_repo, local):
    local.apply([K1, K2])  # the registry exists before the server reads it
    with OfflineServer(generated_repo, port=0) as server:
        yield server


@pytest.fixture(scope="module")
def remotes(engine_server, generated_repo, tmp_path_factory) -> dict[str, FeatureStore]:
    base = tmp_path_factory.mktemp("differential_clients").resolve()
    return both_clients(base, engine_server, generated_repo)


# --- the properties ----------------------------------------------------------------


def assert_remote_equals_local(
    case: Case, local: FeatureStore, remotes: dict[str, FeatureStore], server: OfflineServer
) -> None:
    """The case's retrieval, asked locally and through ``server`` by Feast's
    stock client, flightlab's client and (for a list of references) a bare
    wire request: every answer equals the local one, and the engine gave it."""
    features = apply_case(local, case, Path(local.repo_path) / "data")
    assert_answers_equal_local(case, features, local, remotes, server)


def assert_answers_equal_local(
    case: Case,
    features: list | FeatureService,
    local: FeatureStore,
    remotes: dict[str, FeatureStore],
    server: OfflineServer,
) -> None:
    """The retrieval of ``features`` for the case's entity rows, as
    :func:`assert_remote_equals_local` checks it, on objects already applied."""
    entities = entity_frame(case)
    names = case.full_feature_names
    expected = local.get_historical_features(
        entity_df=entities, features=features, full_feature_names=names
    ).to_df()
    before = engine_answers(server)
    answers = {
        client: remotes[client]
        .get_historical_features(entity_df=entities, features=features, full_feature_names=names)
        .to_df()
        for client in ("flightlab", "stock")
    }
    if isinstance(features, list):
        # Only the references asked for: the server's plan adds the features
        # that on-demand views read, as a client's Feast does before it sends.
        request = protocol.GetHistoricalFeatures(
            features=tuple(features), entity_df=arrow(entities), full_feature_names=names
        )
        with OfflineFlightClient(server.location) as wire:
            answers["wire"] = wire.fetch(request).to_pandas()
    for client, got in answers.items():
        assert list(got.columns) == list(expected.columns), client
        assert_same_rows(expected, got, ["row_id"])
    assert engine_answers(server) == before + len(answers)


def a_view(entities, ttl=None, created=False, mapped=False, rows=()) -> ViewCase:
    return ViewCase(tuple(entities), ttl, created, mapped, tuple(rows))


def a_case(views, entity_rows, zone="UTC", full_names=False, service=False, **more) -> Case:
    return Case(
        views=tuple(views),
        entity_rows=tuple(entity_rows),
        zone=zone,
        full_feature_names=full_names,
        through_service=service,
        join_key_map=more.get("join_key_map", False),
        on_demand=more.get("on_demand", "none"),
    )


DAY = 86_400
# Rows are (k1, k2, seconds after T0, f_int, f_float, f_str); entity rows (k1, k2, seconds).
# A feature service aliasing both views and mapping k1 to the entity column other_k1 (= k1 + 1).
ALIASES_AND_JOIN_KEY_MAP = a_case(
    [
        a_view(
            ["k1"],
            timedelta(days=1),
            mapped=True,
            rows=[(1, "a", 2, 4, 1.5, "x"), (3, "b", 5, None, -2.0, None)],
        ),
        a_view(
            ["k1", "k2"],
            created=True,
            rows=[(1, "a", 1, 2, 3.0, "y"), (1, "a", 1, 3, 4.0, "x"), (3, "b", 4, -1, 0.5, "x")],
        ),
    ],
    [(0, "a", 4), (1, "a", 1), (2, "b", 3), (2, "b", 6), (1, "c", 0), (0, "a", 4)],
    full_names=True,
    service=True,
    join_key_map=True,
)
# Feature rows exactly at entity_ts - ttl and at entity_ts both count; one a
# second older does not, nor does one later than the entity row.
TTL_BOUNDARIES = a_case(
    [
        a_view(
            ["k1"],
            timedelta(seconds=3),
            rows=[(1, "a", 2, 7, 1.0, "x"), (2, "a", 5, 8, 2.0, "y"), (3, "a", 0, 9, 3.0, None)],
        )
    ],
    [(1, "a", 5), (1, "a", 6), (2, "a", 5), (2, "a", 4), (3, "a", 3), (3, "a", 4)],
)
# The same boundary with a one-day TTL, the entity timestamps in India's zone (UTC+05:30).
TTL_BOUNDARY_IN_ANOTHER_ZONE = a_case(
    [
        a_view(
            ["k1", "k2"],
            timedelta(days=1),
            rows=[(1, "a", 0, 1, 0.5, "x"), (2, "b", 3, 2, 1.5, "y")],
        )
    ],
    [(1, "a", DAY), (1, "a", DAY + 1), (2, "b", DAY + 3), (2, "b", 3), (2, "b", 2)],
    zone="Asia/Kolkata",
    full_names=True,
)
# TTL 0 is no lower bound: a row thirty days old still counts.
TTL_ZERO = a_case(
    [a_view(["k1"], timedelta(0), rows=[(1, "a", 0, 5, 2.5, "x"), (2, "a", 8, 6, 3.5, "y")])],
    [(1, "a", 30 * DAY), (2, "a", 7), (2, "a", 30 * DAY)],
    zone="America/New_York",
)
# Rows of one key sharing an event timestamp: the greatest created timestamp
# wins (created: row i at T0 + (7 i mod 13) minutes, so row 1 here).
CREATED_TIES = a_case(
    [
        a_view(
            ["k1"],
            created=True,
            rows=[
                (1, "a", 3, 1, 1.0, "x"),
                (1, "a", 3, 2, 2.0, "y"),
                (1, "a", 3, 3, 3.0, None),
                (1, "a", 4, 4, 4.0, "x"),
            ],
        )
    ],
    [(1, "a", 3), (1, "a", 4), (1, "a", 12), (1, "a", 2)],
    zone="naive",
)
# An on-demand view asked for without the feature it reads (f_float0).
ON_DEMAND_WITHOUT_ITS_INPUT = a_case(
    [
        a_view(["k1"], rows=[(1, "a", 1, 1, 1.25, "x"), (2, "a", 2, None, -3.0, "y")]),
        a_view(["k1", "k2"], timedelta(seconds=3), rows=[(1, "b", 2, 7, 0.0, None)]),
    ],
    [(1, "a", 4), (2, "a", 2), (1, "b", 4), (3, "a", 9)],
    on_demand="alone",
)


def generated_cases(max_examples: int, *more: Case) -> Callable:
    """A differential test over ``max_examples`` generated cases (a fixed
    seed, no shrinking: CI stays fast) and, first, the pinned ones: those a
    bounded search may miss, and ``more``."""
    pinned = (
        *more,
        ALIASES_AND_JOIN_KEY_MAP,
        TTL_BOUNDARIES,
        TTL_BOUNDARY_IN_ANOTHER_ZONE,
        TTL_ZERO,
        CREATED_TIES,
        ON_DEMAND_WITHOUT_ITS_INPUT,
        dataclasses.replace(ON_DEMAND_WITHOUT_ITS_INPUT, full_feature_names=True),
    )

    def decorate(test: Callable) -> Callable:
        for case in reversed(pinned):
            test = example(case=case)(test)
        return settings(
            max_examples=max_examples,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )(given(case=cases)(test))

    return decorate


@generated_cases(25)
def test_remote_retrievals_equal_the_local_duckdb_store(case, local, remotes, engine_server):
    assert_remote_equals_local(case, local, remotes, engine_server)


@settings(
    max_examples=10,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(view=view_cases(), window=st.sampled_from([None, (0, 4), (3, 3), (5, 100)]))
def test_remote_pulls_equal_the_local_duckdb_store(
    view, window, local, remotes, generated_repo, engine_server
):
    name = f"p{next(_names)}"
    fv = feature_view(name, view, generated_repo / "data")
    local.apply([K1, K2, fv])
    keys = list(view.entities)
    columns = ["f_int0", "raw_f0" if view.mapped else "f_float0", "f_str0"]
    start = end = None
    if window is not None:
        start, end = (T0 + timedelta(seconds=s) for s in window)
    before, remote_calls = engine_answers(engine_server), 0
    for client in ("flightlab", "stock"):
        for api in ("pull_all_from_table_or_query", "pull_latest_from_table_or_query"):
            if api.startswith("pull_latest") and window is None:
                continue  # its dates are required
            results = [
                getattr(offline_store_of(store), api)(
                    config=store.config,
                    data_source=fv.batch_source,
                    join_key_columns=keys,
                    feature_name_columns=columns,
                    timestamp_field="ts",
                    created_timestamp_column="created" if view.created else None,
                    start_date=start,
                    end_date=end,
                ).to_df()
                for store in (local, remotes[client])
            ]
            expected, got = results
            remote_calls += 1
            assert list(got.columns) == list(expected.columns)
            assert_same_rows(expected, got, list(expected.columns))
    # The engine answered every remote pull, not Feast's store.
    assert engine_answers(engine_server) == before + remote_calls


# --- sources that are folders, paths relative to the repo ------------------------------

SPREAD_VIEW = a_view(
    ["k1", "k2"],
    timedelta(seconds=5),
    created=True,
    mapped=True,
    rows=[
        (1, "a", 2, 1, 0.5, "x"),
        (1, "a", 2, 2, 1.5, "y"),
        (1, "a", 2, 3, 2.5, None),
        (2, "b", 4, None, -1.0, "x"),
        (2, "b", 6, 5, -2.0, "y"),
        (3, "a", 1, 6, 4.0, None),
        (1, "a", 7, 7, 8.0, "x"),
    ],
)
SPREAD_ENTITIES = [(1, "a", 2), (1, "a", 7), (1, "a", 13), (2, "b", 5), (2, "b", 9), (3, "a", 9)]


@pytest.mark.parametrize("layout", ["folder", "relative"])
def test_folder_and_repo_relative_sources_read_as_the_local_store_reads_them(
    layout, local, remotes, engine_server, monkeypatch, tmp_path
):
    repo = Path(local.repo_path)
    name = f"{layout}{next(_names)}"
    fv = feature_view(name, SPREAD_VIEW, repo / "data", layout=layout)
    local.apply([K1, K2, fv])
    entities = entity_frame(a_case([SPREAD_VIEW], SPREAD_ENTITIES))
    features = [f"{name}:{f}0" for f in ("f_int", "f_float", "f_str")]

    def answers(store: FeatureStore) -> tuple[pd.DataFrame, pd.DataFrame]:
        historical = store.get_historical_features(entity_df=entities, features=features)
        pulled = offline_store_of(store).pull_all_from_table_or_query(
            config=store.config,
            data_source=fv.batch_source,
            join_key_columns=["k1", "k2"],
            feature_name_columns=["f_int0", "raw_f0", "f_str0"],
            timestamp_field="ts",
            created_timestamp_column="created",
        )
        return historical.to_df(), pulled.to_df()

    # Feast's duckdb store reads a relative path from the working directory;
    # the engine reads it from the repo, wherever the server was started. The
    # local answer is asked from the repo folder, the remote ones from another.
    monkeypatch.chdir(repo)
    expected, expected_pull = answers(local)
    monkeypatch.chdir(tmp_path)
    before = engine_answers(engine_server)
    for client in ("flightlab", "stock"):
        got, got_pull = answers(remotes[client])
        assert list(got.columns) == list(expected.columns), client
        assert_same_rows(expected, got, ["row_id"])
        assert list(got_pull.columns) == list(expected_pull.columns), client
        assert_same_rows(expected_pull, got_pull, list(expected_pull.columns))
    assert engine_answers(engine_server) == before + 4
