"""flightlab's engine against Feast's duckdb store, on generated repos.

Each case is a small real Feast repo made up by hypothesis (fixed seed,
bounded examples): one to three feature views over parquet files on one or
two entities (or none), TTLs (none, zero, short, with entity timestamps
exactly on the boundary), created-timestamp ties, field mappings, feature
services whose projections alias views and map join keys, an on-demand view,
duplicate entity rows, unknown keys, an extra column and entity timestamps
in other zones. The same retrieval is asked through a flightlab server, with
flightlab's client and with Feast's stock ``type: remote`` client, and must
equal the local duckdb store's answer: rows, values, names and dtypes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String
from feast.value_type import ValueType
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from offline_helpers import assert_same_rows, make_client_store, offline_store_of
from test_feast_compat import stock_client

from flightlab.server import OfflineServer

PROJECT = "flightlab_sample"  # the project the client helpers' yaml names
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
    on_demand: bool


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
    on_demand=st.booleans(),
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


def feature_view(name: str, view: ViewCase, data: Path, i: int = 0) -> FeatureView:
    """A view whose features are named f_int{i}, f_float{i}, f_str{i}."""
    path = data / f"{name}.parquet"
    source_frame(view, i).to_parquet(path)
    source = FileSource(
        name=f"{name}_source",
        path=str(path),
        timestamp_field="ts",
        created_timestamp_column="created" if view.created else "",
        field_mapping={f"raw_f{i}": f"f_float{i}"} if view.mapped else None,
    )
    return FeatureView(
        name=name,
        entities=[{"k1": K1, "k2": K2}[key] for key in view.entities],
        ttl=view.ttl,
        schema=[
            Field(name=f"f_int{i}", dtype=Int64),
            Field(name=f"f_float{i}", dtype=Float64),
            Field(name=f"f_str{i}", dtype=String),
        ],
        source=source,
    )


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
    objects: list = [K1, K2, *views]
    if case.through_service:
        projections = []
        for i, view in enumerate(views):
            projection = view.with_name(f"c{n}_alias{i}")
            if case.join_key_map and "k1" in case.views[i].entities:
                projection = projection.with_join_key_map({"k1": "other_k1"})
            projections.append(projection[[f"f_int{i}", f"f_str{i}"]] if i else projection)
        features: list | FeatureService = FeatureService(name=f"c{n}_service", features=projections)
        objects.append(features)
    else:
        features = [
            f"{view.name}:{f}{i}"
            for i, view in enumerate(views)
            for f in ("f_int", "f_float", "f_str")
        ]
        if case.on_demand:
            odfv = doubling_view(f"c{n}_doubled", views[0])
            objects.append(odfv)
            features.append(f"c{n}_doubled:doubled")
    store.apply(objects)
    return features


# --- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("differential").resolve()
    (repo / "data").mkdir()
    (repo / "feature_store.yaml").write_text(
        f"project: {PROJECT}\nprovider: local\n"
        "registry:\n  path: data/registry.db\n  cache_ttl_seconds: 0\n"
        "online_store:\n  type: sqlite\n  path: data/online.db\n"
        "offline_store:\n  type: duckdb\nentity_key_serialization_version: 3\n"
    )
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
    registry = generated_repo / "data" / "registry.db"
    base = tmp_path_factory.mktemp("differential_clients").resolve()
    return {
        "flightlab": make_client_store(base / "flightlab", engine_server.port, generated_repo),
        "stock": stock_client(base / "stock", engine_server, registry),
    }


# --- the properties ----------------------------------------------------------------


@settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: CI stays fast
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases)
def test_remote_retrievals_equal_the_local_duckdb_store(
    case, local, remotes, engine_server, generated_repo
):
    features = apply_case(local, case, generated_repo / "data")
    entities = entity_frame(case)
    expected = local.get_historical_features(
        entity_df=entities, features=features, full_feature_names=case.full_feature_names
    ).to_df()
    before = engine_server.stats_json()["requests_by_engine"].get("flightlab", 0)
    for client in ("flightlab", "stock"):
        got = (
            remotes[client]
            .get_historical_features(
                entity_df=entities, features=features, full_feature_names=case.full_feature_names
            )
            .to_df()
        )
        assert list(got.columns) == list(expected.columns), client
        assert_same_rows(expected, got, ["row_id"])
    assert engine_server.stats_json()["requests_by_engine"]["flightlab"] == before + 2


@settings(
    max_examples=10,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(view=view_cases(), window=st.sampled_from([None, (0, 4), (3, 3), (5, 100)]))
def test_remote_pulls_equal_the_local_duckdb_store(view, window, local, remotes, generated_repo):
    name = f"p{next(_names)}"
    fv = feature_view(name, view, generated_repo / "data")
    local.apply([K1, K2, fv])
    keys = list(view.entities)
    columns = ["f_int0", "raw_f0" if view.mapped else "f_float0", "f_str0"]
    start = end = None
    if window is not None:
        start, end = (T0 + timedelta(seconds=s) for s in window)
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
            assert list(got.columns) == list(expected.columns)
            assert_same_rows(expected, got, list(expected.columns))
