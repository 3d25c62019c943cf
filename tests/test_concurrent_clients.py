"""Many clients at once, on the shared server.

Several threads at once, each with its own entity rows, each get their own
correct answer; commands staged by one client are never run for another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
from feast import FeatureStore
from offline_helpers import ENTITY_KEYS, FEATURES, assert_same_rows, server_stats

from flightlab.client.transport import OfflineFlightClient
from flightlab.testing.sample_repo import entity_frame
from flightlab.wire import protocol
from flightlab.wire.headers import OWNER_HEADER

THREADS = 8
# A thread not done by then is stuck: fail rather than hang the suite.
THREAD_DEADLINE = 120.0


def in_threads(work: Callable[[int], Any], count: int = THREADS) -> list[Any]:
    """Run ``work(0..count-1)`` in as many threads at once; their results in order."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = work(i)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + THREAD_DEADLINE
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(thread.is_alive() for thread in threads)
    assert not stuck, f"{stuck} of {count} threads still waiting after {THREAD_DEADLINE:g} s"
    if errors:
        raise errors[0]
    return results


def test_threads_at_once_each_get_their_own_answer(client_store, local_store, offline_server):
    # Different entity rows per thread (count and seed), so any mix-up shows.
    entity_frames = [entity_frame(20 + 3 * i, seed=200 + i) for i in range(THREADS)]
    expected = [local_store.get_historical_features(e, FEATURES).to_df() for e in entity_frames]
    served_before = server_stats(offline_server)["requests_by_api"].get(
        "get_historical_features", 0
    )
    # Each thread is its own client, as separate users would be.
    client_repo = client_store.repo_path
    start = threading.Barrier(THREADS)

    def retrieve(i: int) -> pd.DataFrame:
        store = FeatureStore(repo_path=str(client_repo))
        start.wait(timeout=60)
        return store.get_historical_features(entity_frames[i], FEATURES).to_df()

    answers = in_threads(retrieve)

    for want, got in zip(expected, answers, strict=True):
        assert_same_rows(want, got, ENTITY_KEYS)
    stats = server_stats(offline_server)
    assert stats["requests_by_api"]["get_historical_features"] == served_before + THREADS
    assert stats["staged_commands"] == 0


def test_a_command_staged_by_one_client_is_never_run_for_another(offline_server, local_store):
    # Every client stages its command first; only when all are staged does
    # each ask for its own. Each must get the rows it sent, none another's.
    entity_frames = [entity_frame(10 + i, seed=300 + i) for i in range(THREADS)]
    requests = [
        protocol.GetHistoricalFeatures(features=tuple(FEATURES), entity_df=pa.Table.from_pandas(e))
        for e in entity_frames
    ]
    all_staged = threading.Barrier(THREADS)
    staged_counts: list[int] = []

    def stage_then_fetch(i: int) -> pd.DataFrame:
        secret = f"client-{i}"
        with OfflineFlightClient(offline_server.location, timeout=60, owner=secret) as client:
            command_id = client.stage(requests[i])
            all_staged.wait(timeout=60)
            staged_counts.append(client.stats()["staged_commands"])
            # A second connection of the same client: it sends the same owner secret.
            raw = flight.FlightClient(offline_server.location)
            owner = flight.FlightCallOptions(headers=[(OWNER_HEADER.encode(), secret.encode())])
            try:
                info = raw.get_flight_info(protocol.command_descriptor(command_id), owner)
                return raw.do_get(info.endpoints[0].ticket, owner).read_pandas()
            finally:
                raw.close()

    answers = in_threads(stage_then_fetch)

    assert max(staged_counts) == THREADS  # all eight were staged side by side
    for entities, got in zip(entity_frames, answers, strict=True):
        want = local_store.get_historical_features(entities, FEATURES).to_df()
        assert_same_rows(want, got, ENTITY_KEYS)
    assert server_stats(offline_server)["staged_commands"] == 0
