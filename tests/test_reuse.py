"""The same training set asked twice is answered once: the server keeps recent
results and answers an identical request from them, with the rows a
recomputation gives; a write through the server, or a source changed on disk
or in S3 (a new ETag), means the next request is computed afresh; the bytes
kept stay within bound.

The module has its own repos (its tests write to them) and servers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
from feast import Entity, FeatureStore, FeatureView, Field, FileSource
from feast.types import Float32, Int64
from feast.value_type import ValueType
from object_storage_helpers import BUCKET, s3_credentials
from offline_helpers import (
    ENTITY_KEYS,
    FEATURES,
    assert_same_rows,
    make_client_store,
    make_repo,
    wait_until,
)
from offline_helpers import new_driver_rows as later_driver_rows

from flightlab.dispatch.source_versions import source_version
from flightlab.errors import OfflineStoreCredentialsError
from flightlab.server import OfflineServer
from flightlab.server.limits import ServerLimits
from flightlab.testing.s3 import S3Server
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


def test_identical_requests_at_once_are_computed_once_and_all_get_the_local_answer(
    remote, local, server
):
    entities = entity_frame(40, seed=16)
    expected = local.get_historical_features(entities, FEATURES).to_df()
    before = _reuse(server)
    answers: list = [None] * 4
    start = threading.Barrier(4)

    def fetch(i: int) -> None:
        start.wait()
        answers[i] = remote.get_historical_features(entities, FEATURES).to_df()

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for answer in answers:
        assert_same_rows(expected, answer, ENTITY_KEYS)
    # One computed; the three that came while it was, or after, answered from it.
    after = _reuse(server)
    assert (after["misses"] - before["misses"], after["hits"] - before["hits"]) == (1, 3)


def test_a_request_waiting_for_an_abandoned_identical_one_computes_its_own(repo, local, tmp_path):
    limits = ServerLimits(batch_rows=5)  # 20,000 batches: far more than gRPC buffers ahead
    with OfflineServer(repo, host="127.0.0.1", port=0, limits=limits) as small_batches:
        first = make_client_store(tmp_path / "first", small_batches.port, repo)
        second = make_client_store(tmp_path / "second", small_batches.port, repo)
        entities = entity_frame(100_000, seed=18)
        abandoned = first.get_historical_features(entities, FEATURES).to_arrow_batches()
        next(abandoned)  # the first is being answered, and not yet kept
        waited: dict = {}

        def fetch_the_same() -> None:
            started = time.monotonic()
            waited["answer"] = second.get_historical_features(entities, FEATURES).to_df()
            waited["seconds"] = time.monotonic() - started

        waiting = threading.Thread(target=fetch_the_same)
        waiting.start()
        assert wait_until(lambda: _computing(small_batches) == 1)
        time.sleep(0.3)
        assert waiting.is_alive()  # it waits for the first, not computing its own
        abandoned.close()  # the first client stops reading: nothing will be kept
        waiting.join(timeout=60)

        expected = local.get_historical_features(entities, FEATURES).to_df()
        assert_same_rows(expected, waited["answer"], ENTITY_KEYS)
        assert waited["seconds"] < 30  # woken, not timed out
        assert _reuse(small_batches)["misses"] == 2 and _reuse(small_batches)["entries"] == 1


def test_a_waiting_request_whose_client_leaves_frees_its_worker(repo, tmp_path):
    limits = ServerLimits(batch_rows=5, workers=2)  # 20,000 batches: the first stays streaming
    with OfflineServer(repo, host="127.0.0.1", port=0, limits=limits) as server:
        remote = make_client_store(tmp_path / "client", server.port, repo)
        entities = entity_frame(100_000, seed=19)
        held = remote.get_historical_features(entities, FEATURES).to_arrow_batches()
        next(held)  # the first holds a worker while it streams, unread
        assert server.stats_json()["workers"]["running"] == 1

        with pytest.raises(flight.FlightTimedOutError):  # its deadline passes as it waits
            remote.get_historical_features(entities, FEATURES).to_arrow(timeout=1)

        # Its worker is free again at once, not after the wait's 5 minutes.
        assert wait_until(lambda: server.stats_json()["workers"]["running"] == 1, timeout=5)
        held.close()
        assert wait_until(lambda: server.stats_json()["workers"]["running"] == 0)


def _computing(server: OfflineServer) -> int:
    return len(server.dispatcher.reuse._computing)


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


# --- sources in S3: versioned by their objects' ETags ----------------------------------------

S3_KEY = "kept/driver_stats.parquet"
S3_FEATURES = ["s3_stats:conv_rate", "s3_stats:trips"]


def s3_driver_stats(scale: float) -> pa.Table:
    rng = np.random.default_rng(5)
    rows = 2_000
    seconds = np.sort(rng.integers(0, 10 * 86_400, rows))
    return pa.table(
        {
            "driver_id": pa.array(rng.integers(0, 50, rows), pa.int64()),
            "event_timestamp": pa.array(_utc_microseconds("2025-01-01", seconds)),
            "conv_rate": pa.array(rng.random(rows) * scale, pa.float32()),
            "trips": pa.array(rng.integers(0, 100, rows), pa.int64()),
        }
    )


def _utc_microseconds(day: str, seconds: np.ndarray) -> pd.Series:
    stamps = pd.Timestamp(day, tz="UTC") + pd.to_timedelta(seconds, unit="s")
    return pd.Series(stamps).astype("datetime64[us, UTC]")


def s3_stats_view(path: str, **source: object) -> FeatureView:
    return FeatureView(
        name="s3_stats",
        entities=[S3_DRIVER],
        ttl=timedelta(days=2),
        schema=[Field(name="conv_rate", dtype=Float32), Field(name="trips", dtype=Int64)],
        source=FileSource(
            name="s3_stats_source", path=path, timestamp_field="event_timestamp", **source
        ),
    )


S3_DRIVER = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)


def s3_entities() -> pd.DataFrame:
    rng = np.random.default_rng(9)
    at = _utc_microseconds("2025-01-02", rng.integers(0, 8 * 86_400, 300))
    return pd.DataFrame({"driver_id": rng.integers(0, 60, 300), "event_timestamp": at})


@pytest.fixture(scope="module")
def s3_stores(tmp_path_factory) -> Iterator[tuple]:
    """A loopback S3 server holding the object, a local repo reading the same
    bytes from disk, and a flightlab client of a server (keeping results)
    whose repo reads the object."""
    work = tmp_path_factory.mktemp("reuse_s3")
    data = work / "driver_stats.parquet"
    pq.write_table(s3_driver_stats(1.0), data)
    with S3Server(log=work / "moto.log") as s3, s3_credentials(s3):
        s3.create_bucket(BUCKET)
        uri = s3.upload_file(data, BUCKET, S3_KEY)
        local = FeatureStore(repo_path=str(make_repo(work / "local")))
        local.apply([S3_DRIVER, s3_stats_view(str(data))])
        repo = make_repo(work / "server")
        view = s3_stats_view(uri, s3_endpoint_override=s3.endpoint)
        FeatureStore(repo_path=str(repo)).apply([S3_DRIVER, view])
        with OfflineServer(repo, port=0) as server:
            remote = make_client_store(work / "client", server.port, repo)
            yield s3, data, local, remote, server


def test_a_result_read_from_s3_is_kept_until_its_object_changes(s3_stores):
    s3, data, local, remote, server = s3_stores
    entities = s3_entities()
    first = remote.get_historical_features(entities, S3_FEATURES).to_df()
    kept = _reuse(server)

    s3.reset_counts()
    second = remote.get_historical_features(entities, S3_FEATURES).to_df()

    assert _reuse(server)["hits"] == kept["hits"] + 1
    assert s3.counts().bytes_of(S3_KEY) == 0  # HEADs only: the ETag, no body
    assert_same_rows(first, second, ["driver_id", "event_timestamp"])
    # The same key, other bytes: a new ETag, so the result is computed afresh.
    pq.write_table(s3_driver_stats(2.0), data)
    s3.upload_file(data, BUCKET, S3_KEY)
    third = remote.get_historical_features(entities, S3_FEATURES).to_df()
    assert _reuse(server)["misses"] == kept["misses"] + 1
    expected = local.get_historical_features(entities, S3_FEATURES).to_df()
    assert_same_rows(expected, third, ["driver_id", "event_timestamp"])
    assert not np.allclose(first["conv_rate"].fillna(0), third["conv_rate"].fillna(0))


def test_a_kept_s3_result_is_not_given_when_the_store_refuses_the_server(s3_stores):
    s3, _, _, remote, server = s3_stores
    entities = s3_entities()
    remote.get_historical_features(entities, S3_FEATURES).to_df()  # kept
    s3.check_credentials()  # the store refuses the server's key from now on
    try:
        with pytest.raises(OfflineStoreCredentialsError):
            remote.get_historical_features(entities, S3_FEATURES).to_df()
    finally:
        s3.check_credentials(False)


def test_a_prefix_is_versioned_by_every_object_below_it(s3_stores, tmp_path):
    s3 = s3_stores[0]
    part = tmp_path / "part.parquet"
    pq.write_table(s3_driver_stats(1.0), part)
    for name in ("a", "b"):
        s3.upload_file(part, BUCKET, f"prefix/{name}.parquet")
    source = FileSource(
        path=f"s3://{BUCKET}/prefix/",
        timestamp_field="event_timestamp",
        s3_endpoint_override=s3.endpoint,
    )
    before = source_version(source, None)
    s3.upload_file(part, BUCKET, "prefix/b.parquet")  # the same bytes again
    assert source_version(source, None) == before
    pq.write_table(s3_driver_stats(3.0), part)
    s3.upload_file(part, BUCKET, "prefix/b.parquet")
    after = source_version(source, None)
    assert after.name == before.name == f"s3://{BUCKET}/prefix"
    assert [key for key, *_ in after.version] == [key for key, *_ in before.version]
    assert after.version[0] == before.version[0] and after.version[1] != before.version[1]
