"""The same training set asked twice is answered once: the server keeps recent
results and answers an identical request from them, with the rows a
recomputation gives; a write through the server, or a source changed on disk,
means the next request is computed afresh; the bytes kept stay within bound.

The module has its own repo (its tests write to it) and servers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from feast import FeatureStore
from offline_helpers import ENTITY_KEYS, FEATURES, assert_same_rows, make_client_store
from offline_helpers import new_driver_rows as later_driver_rows

from flightlab.server import OfflineServer
from flightlab.server.limits import ServerLimits
from flightlab.testing.sample_repo import create_sample_repo, entity_frame


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return create_sample_repo(tmp_path_factory.mktemp("reuse").resolve() / "server", "duckdb")


@pytest.fixture(scope="module")
def server(repo) -> Iterator[OfflineServer]:
    with OfflineServer(repo, host="127.0.0.1", port=0) as running:
        yield running


@pytest.fixture(scope="module")
def local(repo) -> FeatureStore:
    return FeatureStore(repo_path=str(repo))


@pytest.fixture(scope="module")
def remote(server, repo, tmp_path_factory) -> FeatureStore:
    return make_client_store(tmp_path_factory.mktemp("reuse_client") / "client", server.port, repo)


def _reuse(server: OfflineServer) -> dict[str, int]:
    return server.stats_json()["result_reuse"]


def _answered_by(server: OfflineServer) -> dict[str, int]:
    return server.stats_json()["requests_by_engine"]


def test_the_same_request_twice_is_answered_from_the_kept_result(remote, local, server):
    entities = entity_frame(30, seed=11)
    before = _reuse(server)

    first = remote.get_historical_features(entities, FEATURES).to_df()
    second = remote.get_historical_features(entities, FEATURES).to_df()

    after = _reuse(server)
    assert after["misses"] == before["misses"] + 1
    assert after["hits"] == before["hits"] + 1
    assert after["entries"] == before["entries"] + 1 and after["bytes"] > before["bytes"]
    assert_same_rows(first, second, ENTITY_KEYS)
    assert_same_rows(local.get_historical_features(entities, FEATURES).to_df(), second, ENTITY_KEYS)
    # Another entity frame, or other options, is another request.
    remote.get_historical_features(entity_frame(30, seed=12), FEATURES).to_df()
    remote.get_historical_features(entities, FEATURES, full_feature_names=True).to_df()
    assert _reuse(server)["hits"] == after["hits"]


def test_a_request_can_ask_to_be_computed_afresh(remote, server):
    entities = entity_frame(25, seed=13)
    job = remote.get_historical_features(entities, FEATURES)
    kept = job.to_arrow()
    hits, by_engine = _reuse(server)["hits"], _answered_by(server).get("flightlab", 0)

    fresh = job.without_reuse().to_arrow()

    assert _reuse(server)["hits"] == hits
    assert _answered_by(server).get("flightlab", 0) == by_engine + 1  # computed again
    assert_same_rows(kept.to_pandas(), fresh.to_pandas(), ENTITY_KEYS)


def test_a_write_through_the_server_drops_what_read_the_source(remote, local, server):
    entities = entity_frame(20, seed=14)
    remote.get_historical_features(entities, FEATURES).to_df()
    misses = _reuse(server)["misses"]

    remote.write_to_offline_store("driver_stats", later_driver_rows(3, (1001, 1002)))
    again = remote.get_historical_features(entities, FEATURES).to_df()

    assert _reuse(server)["misses"] == misses + 1
    assert_same_rows(local.get_historical_features(entities, FEATURES).to_df(), again, ENTITY_KEYS)


def test_a_source_changed_on_disk_is_read_again(remote, local, server, repo):
    entities = entity_frame(20, seed=15)
    remote.get_historical_features(entities, FEATURES).to_df()
    misses = _reuse(server)["misses"]
    source = Path(local.get_data_source("customer_stats_source").path)
    source = source if source.is_absolute() else repo / source
    table = pq.read_table(source)
    pq.write_table(table, source)  # the same rows, a new modification time

    again = remote.get_historical_features(entities, FEATURES).to_df()

    assert _reuse(server)["misses"] == misses + 1
    assert_same_rows(local.get_historical_features(entities, FEATURES).to_df(), again, ENTITY_KEYS)


def test_identical_requests_at_once_all_get_the_local_answer(remote, local):
    entities = entity_frame(40, seed=16)
    expected = local.get_historical_features(entities, FEATURES).to_df()
    answers: list = [None] * 4

    def fetch(i: int) -> None:
        answers[i] = remote.get_historical_features(entities, FEATURES).to_df()

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for answer in answers:
        assert_same_rows(expected, answer, ENTITY_KEYS)


def test_the_bytes_kept_stay_within_the_bound(repo, tmp_path):
    bound = 12_000
    limits = ServerLimits(reuse_bytes=bound)
    with OfflineServer(repo, host="127.0.0.1", port=0, limits=limits) as small:
        remote = make_client_store(tmp_path / "client", small.port, repo)
        frames = [entity_frame(40, seed=100 + i) for i in range(12)]
        for frame in frames:
            remote.get_historical_features(frame, FEATURES).to_df()
            assert _reuse(small)["bytes"] <= bound
        kept = _reuse(small)
        assert 0 < kept["entries"] < len(frames)
        remote.get_historical_features(frames[-1], FEATURES).to_df()  # the latest: kept
        assert _reuse(small)["hits"] == kept["hits"] + 1
        remote.get_historical_features(frames[0], FEATURES).to_df()  # the oldest: evicted
        assert _reuse(small)["misses"] == kept["misses"] + 1


def test_reuse_can_be_turned_off(repo, tmp_path):
    with OfflineServer(repo, port=0, limits=ServerLimits(reuse_bytes=0)) as off:
        remote = make_client_store(tmp_path / "client", off.port, repo)
        entities = entity_frame(10, seed=17)
        for _ in range(2):
            remote.get_historical_features(entities, FEATURES).to_df()
        assert _reuse(off)["hits"] == 0 and _reuse(off)["entries"] == 0
