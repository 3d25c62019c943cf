"""The protocol as the seed document describes it, and many clients at once.

- A client written from the seed document alone (bare pyarrow.flight, one
  do_put per parameter with ``command``/``api``/``param`` schema metadata,
  then get_flight_info + do_get) works unchanged.
- list_actions lists every action the server runs, each with a description.
- Several threads at once, each with its own entity rows, each get their own
  correct answer; commands staged by one client are never run for another.
"""

from __future__ import annotations

import threading
import time
import uuid
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
from flightlab.wire.actions import ACTION_DROP, ACTION_HEALTHCHECK, ACTION_STATS
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


def test_a_client_written_from_the_seed_document_works_unchanged(raw_flight, local_store):
    entity_df = entity_frame(40, seed=31)
    features = FEATURES

    # "The client creates a unique identifier for a new command, using the
    # UUID format, and generates a Flight Descriptor to represent it."
    command = str(uuid.uuid4())
    descriptor = flight.FlightDescriptor.for_command(command)

    # "Each call also includes additional metadata values to the data schema."
    def metadata(param: str) -> dict[str, str]:
        return {"command": command, "api": "get_historical_features", "param": param}

    entity_table = pa.Table.from_pandas(entity_df)  # as a user writes it: pandas metadata and all
    entity_table = entity_table.replace_schema_metadata(
        {**entity_table.schema.metadata, **metadata("entity_df")}
    )
    writer, _ = raw_flight.do_put(descriptor, entity_table.schema)
    writer.write_table(entity_table)
    writer.close()

    features_batch = pa.RecordBatch.from_arrays([pa.array(features)], ["features"])
    features_batch = features_batch.replace_schema_metadata(metadata("features"))
    writer, _ = raw_flight.do_put(descriptor, features_batch.schema)
    writer.write_batch(features_batch)
    writer.close()

    info = raw_flight.get_flight_info(descriptor)
    got = raw_flight.do_get(info.endpoints[0].ticket).read_pandas()

    expected = local_store.get_historical_features(entity_df, features).to_df()
    assert_same_rows(expected, got, ENTITY_KEYS)


def test_list_actions_lists_every_action_with_a_description(flight_client):
    actions = dict(flight_client.list_actions())
    runnable = {cls.api for cls in protocol.ACTION_REQUESTS}
    assert runnable == {
        "offline_write_batch",
        "write_logged_features",
        "persist",
        "validate_data_source",
    }
    assert set(actions) == runnable | {ACTION_DROP, ACTION_STATS, ACTION_HEALTHCHECK}
    for name, description in actions.items():
        assert len(description) > 20, name
    for api in runnable:
        assert api in actions[api]  # each says which staged command it runs


def test_the_stats_and_drop_actions_do_what_list_actions_says(flight_client, offline_server):
    request = protocol.GetHistoricalFeatures(
        features=(FEATURES[0],), entity_df=pa.Table.from_pandas(entity_frame(5))
    )
    command_id = flight_client.stage(request)
    assert flight_client.stats()["staged_commands"] == 1

    # Another client cannot drop it (for it, the command does not exist)...
    raw = flight.FlightClient(offline_server.location)
    [answer] = raw.do_action(flight.Action(ACTION_DROP, command_id.encode()))
    assert answer.body.to_pybytes() == b'{"dropped": false}'
    raw.close()
    assert flight_client.stats()["staged_commands"] == 1
    # ...its owner can.
    assert flight_client.drop(command_id)
    assert flight_client.stats()["staged_commands"] == 0


# --- many clients at once ---------------------------------------------------------------


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
