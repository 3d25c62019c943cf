"""flightlab's engine on parquet in object storage, against Feast's duckdb store.

A loopback S3 server (moto's server mode, :mod:`flightlab.testing.s3`) holds
the parquet objects; a real flightlab server serves a repo whose
``FileSource``s are ``s3://`` objects with ``s3_endpoint_override``. The
differential suite's generated cases (``test_engine_differential.py``) are
asked through flightlab's client and Feast's stock ``type: remote`` client,
and each answer must equal Feast's duckdb store's on a repo whose sources are
the same parquet bytes on local disk: rows, values, names and dtypes, and
the engine, not Feast's store, must have answered. Pulls, a prefix of parquet
objects and a single object, field mappings and TTL windows are compared the
same way; ``--engine auto`` answers from S3 on the duckdb and the file
(dask) stores alike, served by ``flightlab serve_offline`` processes. A
retrieval by dates (no entity rows) from S3 equals Feast's file store's
answer on the local files.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from by_dates_helpers import a_dates_case, apply_dates_case, assert_same_answer, dates_of
from feast import FeatureStore
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from object_storage_helpers import (
    BUCKET,
    mirror_to_s3,
    s3_credentials,
    s3_view,
)
from offline_helpers import (
    CLIENTS,
    assert_same_rows,
    both_clients,
    engine_answers,
    make_repo,
    offline_store_of,
)
from test_engine_differential import (
    K1,
    K2,
    SPREAD_ENTITIES,
    SPREAD_VIEW,
    T0,
    Case,
    _names,
    a_case,
    a_view,
    apply_case,
    assert_answers_equal_local,
    entity_frame,
    feature_view,
    generated_cases,
    view_cases,
)

from flightlab.server import OfflineServer
from flightlab.testing.processes import running_server, serve_offline_command
from flightlab.testing.s3 import S3Server

# --- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[S3Server]:
    log = tmp_path_factory.mktemp("s3_server") / "moto.log"
    with S3Server(log=log) as server, s3_credentials(server):
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> FeatureStore:
    """Feast's duckdb store on the local parquet files: the expected answers."""
    repo = make_repo(tmp_path_factory.mktemp("s3_local").resolve())
    return FeatureStore(repo_path=str(repo))


@pytest.fixture(scope="module")
def s3_repo(tmp_path_factory, local) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("s3_repo").resolve())
    FeatureStore(repo_path=str(repo)).apply([K1, K2])  # the registry exists before serving
    local.apply([K1, K2])
    return repo


@pytest.fixture(scope="module")
def s3_store(s3_repo) -> FeatureStore:
    """The S3 repo's own FeatureStore: what applies its objects (it cannot read S3)."""
    return FeatureStore(repo_path=str(s3_repo))


@pytest.fixture(scope="module")
def mirrored() -> set[str]:
    return set()


@pytest.fixture(scope="module")
def engine_server(s3_repo, s3) -> Iterator[OfflineServer]:
    with OfflineServer(s3_repo, port=0) as server:  # --engine auto
        yield server


@pytest.fixture(scope="module")
def remotes(engine_server, s3_repo, tmp_path_factory) -> dict[str, FeatureStore]:
    return both_clients(tmp_path_factory.mktemp("s3_clients").resolve(), engine_server, s3_repo)


# --- the generated cases -------------------------------------------------------------


def assert_s3_equals_local(case: Case, local, s3_store, remotes, server, s3, mirrored) -> None:
    """The case applied locally and mirrored to S3: each client's answer from
    the S3 repo (and a bare wire request's) equals the local duckdb store's,
    and the engine gave it."""
    features = apply_case(local, case, Path(local.repo_path) / "data")
    mirror_to_s3(local, s3_store, s3, mirrored)
    assert_answers_equal_local(case, features, local, remotes, server)


@generated_cases(25)
def test_retrievals_from_s3_equal_the_local_duckdb_store(
    case, local, s3_store, remotes, engine_server, s3, mirrored
):
    assert_s3_equals_local(case, local, s3_store, remotes, engine_server, s3, mirrored)


def pulled(store: FeatureStore, api: str, source, view, start, end) -> pd.DataFrame:
    columns = ["f_int0", "raw_f0" if view.mapped else "f_float0", "f_str0"]
    return getattr(offline_store_of(store), api)(
        config=store.config,
        data_source=source,
        join_key_columns=list(view.entities),
        feature_name_columns=columns,
        timestamp_field="ts",
        created_timestamp_column="created" if view.created else None,
        start_date=start,
        end_date=end,
    ).to_df()


@settings(
    max_examples=10,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(view=view_cases(), window=st.sampled_from([None, (0, 4), (3, 3), (5, 100)]))
# pull_latest without a created column, both bounds (DuckDB 1.5.6's top-n
# window rewrite fails over an Arrow scan: object_store.FetchedRows).
@example(view=a_view(["k1"], rows=[(0, "a", 0, None, 0.0, None), (0, "a", 2, 1, 1.0, "x")]),
         window=(0, 4))  # fmt: skip
def test_pulls_from_s3_equal_the_local_duckdb_store(
    view, window, local, s3_store, remotes, engine_server, s3, mirrored
):
    repo = Path(local.repo_path)
    fv = feature_view(f"p{next(_names)}", view, repo / "data")
    local.apply([K1, K2, fv])
    remote_source = s3_view(fv, repo, s3).batch_source
    s3_store.apply([remote_source])
    start = end = None
    if window is not None:
        start, end = (T0 + timedelta(seconds=s) for s in window)
    before, calls = engine_answers(engine_server), 0
    for client in CLIENTS:
        for api in ("pull_all_from_table_or_query", "pull_latest_from_table_or_query"):
            if api.startswith("pull_latest") and window is None:
                continue  # its dates are required
            expected = pulled(local, api, fv.batch_source, view, start, end)
            got = pulled(remotes[client], api, remote_source, view, start, end)
            calls += 1
            assert list(got.columns) == list(expected.columns)
            assert_same_rows(expected, got, list(expected.columns))
    assert engine_answers(engine_server) == before + calls


# --- a prefix and a single object; field mapping; a TTL window ----------------------------


def spread_answers(store: FeatureStore, name: str, source) -> dict[str, pd.DataFrame]:
    """SPREAD_VIEW's retrieval (TTL 5 s, created ties, a mapped feature) and both pulls."""
    entities = entity_frame(a_case([SPREAD_VIEW], SPREAD_ENTITIES))
    features = [f"{name}:{f}0" for f in ("f_int", "f_float", "f_str")]
    answers = {"historical": store.get_historical_features(entities, features).to_df()}
    for api, window in (
        ("pull_all_from_table_or_query", {}),
        ("pull_latest_from_table_or_query", {"start_date": T0, "end_date": T0 + timedelta(6)}),
    ):
        answers[api] = getattr(offline_store_of(store), api)(
            config=store.config,
            data_source=source,
            join_key_columns=["k1", "k2"],
            feature_name_columns=["f_int0", "raw_f0", "f_str0"],
            timestamp_field="ts",
            created_timestamp_column="created",
            **window,
        ).to_df()
    return answers


def apply_spread_view(local, s3_store, s3, layout: str) -> tuple[str, object, object]:
    """SPREAD_VIEW with its source as a folder (an S3 prefix) or one file
    (one object); its name, local source and S3 source."""
    repo = Path(local.repo_path)
    name = f"{layout}{next(_names)}"
    fv = feature_view(name, SPREAD_VIEW, repo / "data", layout=layout)
    local.apply([K1, K2, fv])
    remote = s3_view(fv, repo, s3)
    s3_store.apply([K1, K2, remote])
    return name, fv.batch_source, remote.batch_source


@pytest.mark.parametrize("layout", ["folder", "file"])
def test_a_prefix_and_a_single_object_read_as_the_local_store_reads_the_files(
    layout, local, s3_store, remotes, engine_server, s3
):
    name, local_source, remote_source = apply_spread_view(local, s3_store, s3, layout)
    if layout == "folder":
        assert remote_source.path == f"s3://{BUCKET}/{name}"  # a prefix of 3 objects
        listed = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=name + "/")["Contents"]
        assert len(listed) == 3
    expected = spread_answers(local, name, local_source)
    assert len(expected["historical"]) == len(SPREAD_ENTITIES)
    before = engine_answers(engine_server)
    for client in CLIENTS:
        got = spread_answers(remotes[client], name, remote_source)
        for what, frame in expected.items():
            assert list(got[what].columns) == list(frame.columns), (client, what)
            keys = ["k1", "k2", "event_timestamp"] if what == "historical" else list(frame.columns)
            assert_same_rows(frame, got[what], keys)
    assert engine_answers(engine_server) == before + 3 * len(CLIENTS)


# --- --engine auto, served by flightlab serve_offline ----------------------------------------


@pytest.mark.parametrize("store_type", ["duckdb", "file"])
def test_engine_auto_answers_from_s3_on_the_duckdb_and_the_file_store(
    store_type, local, s3_store, s3_repo, s3, tmp_path
):
    name, local_source, remote_source = apply_spread_view(local, s3_store, s3, "folder")
    repo = make_repo(tmp_path / "server", store_type, registry=s3_repo / "data" / "registry.db")
    log = tmp_path / "server.log"
    command = serve_offline_command(repo, "--engine", "auto", "--log-level", "info")
    with running_server(command, log=log, env=s3.client_env()) as server:
        clients = both_clients(tmp_path, server, s3_repo)
        # The engine gives Feast's duckdb store's answers, on either store.
        expected = spread_answers(local, name, local_source)
        for client in CLIENTS:
            got = spread_answers(clients[client], name, remote_source)
            for what, frame in expected.items():
                keys = (
                    ["k1", "k2", "event_timestamp"] if what == "historical" else list(frame.columns)
                )
                assert_same_rows(frame, got[what], keys)
        requests = [line for line in server.log_lines() if " engine=" in line]
    assert len(requests) == 3 * len(CLIENTS), server.log_tail()
    assert all("engine=flightlab" in line for line in requests), requests


# --- retrievals by dates (no entity rows): the file store's answer ---------------------------

ONE_VIEW = a_view(
    ["k1"], timedelta(days=1), rows=[(1, "a", 1, 1, 1.0, "x"), (2, "b", 7, 2, 2.0, None)]
)
DATES_CASES = {
    "one-view": a_dates_case([ONE_VIEW], end=4),
    "two-views-a-service": a_dates_case(
        [
            ONE_VIEW,
            a_view(
                ["k1", "k2"],
                created=True,
                mapped=True,
                rows=[(1, "a", 1, 2, 3.0, "y"), (3, "b", 4, -1, 0.5, "x")],
            ),
        ],
        end=8,
        full_names=True,
        service=True,
    ),
    "an-on-demand-view": a_dates_case([ONE_VIEW, ONE_VIEW], end=9, on_demand="with_input"),
}


@pytest.fixture(scope="module")
def dask_local(local, tmp_path_factory) -> FeatureStore:
    """Feast's file (dask) store on the local files: the answer by dates."""
    registry = Path(local.repo_path) / "data" / "registry.db"
    repo = make_repo(tmp_path_factory.mktemp("s3_dask_local"), "file", registry=registry)
    return FeatureStore(repo_path=str(repo))


@pytest.fixture(scope="module")
def file_store_remotes(s3_repo, s3, tmp_path_factory) -> Iterator[dict[str, FeatureStore]]:
    """Both clients of a server whose repo reads the S3 repo's registry on
    Feast's file (dask) store."""
    registry = s3_repo / "data" / "registry.db"
    repo = make_repo(tmp_path_factory.mktemp("s3_file_store"), "file", registry=registry)
    base = tmp_path_factory.mktemp("s3_file_store_clients")
    with OfflineServer(repo, port=0) as server:  # --engine auto
        yield {**both_clients(base, server, s3_repo), "server": server}


@pytest.mark.parametrize("store_type", ["duckdb", "file"])
@pytest.mark.parametrize("name", DATES_CASES)
def test_retrievals_by_dates_from_s3_equal_the_local_file_store(
    name, store_type, local, dask_local, s3_store, remotes, engine_server, s3, mirrored,
    file_store_remotes,
):  # fmt: skip
    if store_type == "file":
        remotes, engine_server = file_store_remotes, file_store_remotes["server"]
    case = DATES_CASES[name]
    features = apply_dates_case(local, case, Path(local.repo_path) / "data", next(_names))
    mirror_to_s3(local, s3_store, s3, mirrored)
    assert_by_dates_from_s3_equal_dask(case, features, dask_local, remotes, engine_server)


def test_nanosecond_timestamps_in_s3_are_still_read_by_the_engine(
    local, dask_local, s3_store, remotes, engine_server, s3, mirrored
):
    """pandas writes zone-aware timestamps in nanoseconds: where each is a
    whole microsecond, the engine answers by dates from S3 as from disk."""
    case = DATES_CASES["one-view"]
    features = apply_dates_case(local, case, Path(local.repo_path) / "data", next(_names))
    path = local.get_feature_view(features[0].split(":")[0]).batch_source.path
    frame = pd.read_parquet(path)
    frame["ts"] = frame["ts"].astype("datetime64[ns, UTC]")
    frame.to_parquet(path)
    assert str(pd.read_parquet(path)["ts"].dtype) == "datetime64[ns, UTC]"
    mirror_to_s3(local, s3_store, s3, mirrored)
    assert_by_dates_from_s3_equal_dask(case, features, dask_local, remotes, engine_server)


def assert_by_dates_from_s3_equal_dask(case, features, dask_local, remotes, server) -> None:
    """Each client's retrieval by dates from the S3 repo equals the file
    store's on the local files, and the engine gave it."""
    dask_local.refresh_registry()
    call = {"features": features, "full_feature_names": case.full_feature_names, **dates_of(case)}
    expected = dask_local.get_historical_features(**call).to_arrow()
    expected_frame = dask_local.get_historical_features(**call).to_df()
    before = engine_answers(server)
    for client in CLIENTS:
        got = remotes[client].get_historical_features(**call).to_arrow()
        assert_same_answer(expected, got, expected_frame, case, datetime.now(), client)
    assert engine_answers(server) == before + len(CLIENTS)
