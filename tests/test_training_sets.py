"""Training sets cut on the server: splits by hash or by time, samples,
shuffles and shards. Every part is disjoint from the others, the parts hold
every entity row once, each part's rows are the local store's, and the same
seed picks the same rows in the same order on another server process.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from feast import FeatureStore
from offline_helpers import ENTITY_KEYS, FEATURES, assert_same_rows, make_client_store

from flightlab.client import training
from flightlab.client.training import _as_numpy
from flightlab.testing.processes import ServerProcess, running_server, serve_offline_command
from flightlab.testing.sample_repo import START, entity_frame
from flightlab.wire.flight_errors import MalformedParameterError
from flightlab.wire.selection import RowSelection

ROWS = 300
BY = ["driver_id", "customer_id", "event_timestamp"]
SPLIT = {"train": 0.8, "validation": 0.1, "test": 0.1}


def _numbered(rows: int = ROWS) -> pd.DataFrame:
    frame = entity_frame(rows, seed=31)
    frame["position"] = range(rows)
    return frame


@pytest.fixture(scope="module")
def other_server(server_repo, tmp_path_factory) -> Iterator[ServerProcess]:
    """A second server, in a process of its own, on the same repo."""
    log = tmp_path_factory.mktemp("training_server") / "server.log"
    with running_server(serve_offline_command(server_repo), log=log) as process:
        yield process


@pytest.fixture(scope="module")
def other_client(other_server, server_repo, tmp_path_factory) -> FeatureStore:
    folder = tmp_path_factory.mktemp("training_other").resolve() / "client"
    return make_client_store(folder, other_server.port, server_repo)


def _positions(job) -> list[int]:
    return job.to_arrow().column("position").to_pylist()


def test_a_split_is_disjoint_complete_and_the_local_answer(client_store, local_store):
    entities = _numbered()
    job = client_store.get_historical_features(entities, FEATURES)

    parts = {name: part.to_df() for name, part in training.split(job, SPLIT, BY, seed=3).items()}

    positions = [set(frame["position"]) for frame in parts.values()]
    assert sum(len(p) for p in positions) == ROWS
    assert set().union(*positions) == set(range(ROWS))
    assert len(positions[0]) > len(positions[1]) and all(positions)  # about 80 / 10 / 10
    expected = local_store.get_historical_features(entities, FEATURES).to_df()
    for frame in parts.values():
        wanted = expected[expected["position"].isin(frame["position"])]
        assert_same_rows(wanted, frame, [*ENTITY_KEYS, "position"])


def test_the_same_seed_splits_alike_on_another_server_process(client_store, other_client):
    entities = _numbered()
    here = training.split(client_store.get_historical_features(entities, FEATURES), SPLIT, BY, 3)
    there = training.split(other_client.get_historical_features(entities, FEATURES), SPLIT, BY, 3)
    other_seed = training.split(
        client_store.get_historical_features(entities, FEATURES), SPLIT, BY, 4
    )

    for name in SPLIT:
        assert sorted(_positions(here[name])) == sorted(_positions(there[name]))
    assert sorted(_positions(here["test"])) != sorted(_positions(other_seed["test"]))


def test_a_shuffle_is_the_same_order_for_the_same_seed_anywhere(client_store, other_client):
    entities = _numbered()
    here = client_store.get_historical_features(entities, FEATURES)
    there = other_client.get_historical_features(entities, FEATURES)

    first = _positions(training.split(here, {"all": 1.0}, BY, shuffle_seed=9)["all"])
    again = _positions(training.split(there, {"all": 1.0}, BY, shuffle_seed=9)["all"])
    other = _positions(training.split(here, {"all": 1.0}, BY, shuffle_seed=10)["all"])

    assert first == again
    assert first != other and sorted(first) == sorted(other) == list(range(ROWS))


def test_a_sample_is_a_stable_part_of_its_split(client_store):
    job = client_store.get_historical_features(_numbered(), FEATURES)
    whole = set(_positions(training.split(job, SPLIT, BY, seed=3)["train"]))

    sampled = _positions(training.split(job, SPLIT, BY, seed=3, sample=0.5)["train"])
    again = _positions(training.split(job, SPLIT, BY, seed=3, sample=0.5)["train"])

    assert set(sampled) < whole and sorted(sampled) == sorted(again)
    assert 0.3 * len(whole) < len(sampled) < 0.7 * len(whole)


def test_a_split_by_time_puts_each_row_in_its_period(client_store, local_store):
    entities = _numbered()
    cut1, cut2 = (pd.Timestamp(START + timedelta(days=d)) for d in (3, 5))
    job = client_store.get_historical_features(entities, FEATURES)

    parts = training.split_by_time(job, {"train": cut1, "validation": cut2, "test": None})

    frames = {name: part.to_df() for name, part in parts.items()}
    assert (frames["train"]["event_timestamp"] < cut1).all()
    between = frames["validation"]["event_timestamp"]
    assert ((between >= cut1) & (between < cut2)).all()
    assert (frames["test"]["event_timestamp"] >= cut2).all()
    assert sorted(pd.concat(frames.values())["position"]) == list(range(ROWS))
    expected = local_store.get_historical_features(entities, FEATURES).to_df()
    assert_same_rows(expected, pd.concat(frames.values()), [*ENTITY_KEYS, "position"])


def test_a_shard_is_the_same_on_another_server_process(client_store, other_client):
    entities = _numbered()
    here = training.shard(client_store.get_historical_features(entities, FEATURES), 2, 4, BY)
    there = training.shard(other_client.get_historical_features(entities, FEATURES), 2, 4, BY)

    assert sorted(_positions(here)) == sorted(_positions(there))
    assert 0 < len(_positions(here)) < ROWS


def test_shards_are_disjoint_and_complete_batch_by_batch(client_store):
    job = client_store.get_historical_features(_numbered(), FEATURES)

    shards = [
        list(training.shard_arrays(job, i, 3, BY, columns=["position", "conv_rate"]))
        for i in range(3)
    ]

    positions = [np.concatenate([b["position"] for b in batches]) for batches in shards]
    assert all(len(p) for p in positions)
    assert sorted(np.concatenate(positions).tolist()) == list(range(ROWS))
    assert all(isinstance(b["conv_rate"], np.ndarray) for batches in shards for b in batches)
    again = np.concatenate(
        [b["position"] for b in training.shard_arrays(job, 1, 3, BY, ["position"])]
    )
    assert sorted(again.tolist()) == sorted(positions[1].tolist())


def test_a_list_column_of_even_lists_becomes_a_2d_array():
    column = pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], pa.list_(pa.float32()))
    ragged = pa.array([[1.0], [2.0, 3.0]], pa.list_(pa.float32()))

    assert _as_numpy(column).shape == (3, 2)
    assert _as_numpy(column)[2].tolist() == [5.0, 6.0]
    assert _as_numpy(ragged).shape == (2,)


def test_a_selection_naming_no_entity_column_is_refused(client_store):
    job = client_store.get_historical_features(_numbered(20), FEATURES)
    with pytest.raises(Exception, match="no_such_column"):
        training.split(job, SPLIT, ["no_such_column"])["train"].to_df()
    with pytest.raises(MalformedParameterError, match="lower <= upper"):
        RowSelection(keys=("driver_id",), lower=0.6, upper=0.2)
