"""Training sets cut on the server: splits by hash or by time, samples,
shuffles and shards. Every part is disjoint from the others, the parts hold
every entity row once, each part's rows are the local store's, and the same
seed picks the same rows in the same order on another server process.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from feast import FeatureStore
from offline_helpers import ENTITY_KEYS, FEATURES, assert_same_rows, make_client_store

from flightlab.client import connections, training
from flightlab.client.shards import Shard, as_numpy
from flightlab.errors import UnknownCommandError
from flightlab.testing.processes import ServerProcess, running_server, serve_offline_command
from flightlab.testing.sample_repo import START, entity_frame
from flightlab.wire import version
from flightlab.wire.flight_errors import MalformedParameterError, ProtocolVersionError
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


def _shard_positions(shard: Shard) -> list[int]:
    return shard.to_arrow().column("position").to_pylist()


def test_shards_of_one_upload_are_disjoint_complete_and_the_local_answer(
    client_store, local_store, offline_server
):
    entities = _numbered()
    job = client_store.get_historical_features(entities, FEATURES)

    shards = training.shards(job, 3, BY, seed=5)

    assert [(s.index, s.count) for s in shards] == [(0, 3), (1, 3), (2, 3)]
    assert offline_server.stats_json()["staged_commands"] == 1  # one upload for all three
    # A coordinator hands each worker its shard: a shard pickles.
    frames = [pickle.loads(pickle.dumps(shard)).to_arrow().to_pandas() for shard in shards]
    assert offline_server.stats_json()["staged_commands"] == 0
    assert all(len(frame) for frame in frames)
    assert sorted(pd.concat(frames)["position"]) == list(range(ROWS))
    expected = local_store.get_historical_features(entities, FEATURES).to_df()
    assert_same_rows(expected, pd.concat(frames), [*ENTITY_KEYS, "position"])
    # The same rows as the shard a worker asks for on its own.
    for i, frame in enumerate(frames):
        alone = _positions(training.shard(job, i, 3, BY, seed=5))
        assert sorted(frame["position"]) == sorted(alone)


def test_shards_are_the_same_on_another_server_process_and_read_batch_by_batch(
    client_store, other_client
):
    entities = _numbered()
    here = training.shards(client_store.get_historical_features(entities, FEATURES), 4, BY, 8)
    there = training.shards(other_client.get_historical_features(entities, FEATURES), 4, BY, 8)

    for mine, theirs in zip(here, there, strict=True):
        arrays = list(mine.arrays(["position", "conv_rate"]))
        assert all(isinstance(a["conv_rate"], np.ndarray) for a in arrays)
        positions = np.concatenate([a["position"] for a in arrays]) if arrays else []
        assert sorted(positions) == sorted(_shard_positions(theirs))


def test_a_split_part_in_shuffled_shards_holds_the_part_in_the_same_order_anywhere(
    client_store, other_client
):
    entities = _numbered()
    train = training.split(client_store.get_historical_features(entities, FEATURES), SPLIT, BY, 3)
    there = training.split(other_client.get_historical_features(entities, FEATURES), SPLIT, BY, 3)

    here_shards = training.shards(train["train"], 3, shuffle_seed=4)
    there_shards = training.shards(there["train"], 3, shuffle_seed=4)

    read_here = [_shard_positions(shard) for shard in here_shards]
    assert read_here == [_shard_positions(shard) for shard in there_shards]  # order too
    assert sorted(sum(read_here, [])) == sorted(_positions(train["train"]))
    assert any(rows != sorted(rows) for rows in read_here)  # shuffled
    with pytest.raises(ValueError, match="split's keys"):
        training.shards(train["train"], 3, by=["driver_id"])


def test_a_worker_process_reads_the_shard_it_was_handed(client_store, tmp_path):
    job = client_store.get_historical_features(_numbered(), FEATURES)
    handed, kept_here = training.shards(job, 2, BY, seed=1)
    (tmp_path / "shard.pickle").write_bytes(pickle.dumps(handed))
    worker = (
        "import json, pickle, sys\n"
        "shard = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "rows = [b.column('position').to_pylist() for b in shard.batches()]\n"
        "print(json.dumps(sum(rows, [])))\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", worker, str(tmp_path / "shard.pickle")],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip

    read_there = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(read_there + _shard_positions(kept_here)) == list(range(ROWS))


def test_a_shard_serves_once_and_only_to_whom_it_was_given(client_store, offline_server):
    job = client_store.get_historical_features(_numbered(40), FEATURES)
    first, second = training.shards(job, 2, BY)
    forged = dataclasses.replace(second, owner=b"somebody-else")

    with pytest.raises(UnknownCommandError, match="no staged command"):
        forged.to_arrow()  # another owner's command does not exist for it
    read = _shard_positions(first)
    with pytest.raises(UnknownCommandError, match="already been read"):
        first.to_arrow()  # a ticket serves once: a second epoch asks anew
    assert sorted(read + _shard_positions(second)) == list(range(40))
    assert offline_server.stats_json()["staged_commands"] == 0


def test_sharding_asks_a_server_of_the_protocol_that_serves_it(client_store, monkeypatch):
    job = client_store.get_historical_features(_numbered(20), FEATURES)
    monkeypatch.setattr(version, "PROTOCOL_VERSION", version.SHARDS_PROTOCOL - 1)
    connections.close_all()  # learn the (now older) server's version anew
    try:
        with pytest.raises(ProtocolVersionError, match="upgrade flightlab on the server"):
            training.shards(job, 2, BY)
    finally:
        monkeypatch.undo()
        connections.close_all()


def test_a_list_column_of_even_lists_becomes_a_2d_array():
    column = pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], pa.list_(pa.float32()))
    ragged = pa.array([[1.0], [2.0, 3.0]], pa.list_(pa.float32()))

    assert as_numpy(column).shape == (3, 2)
    assert as_numpy(column)[2].tolist() == [5.0, 6.0]
    assert as_numpy(ragged).shape == (2,)


def test_a_selection_naming_no_entity_column_is_refused(client_store):
    job = client_store.get_historical_features(_numbered(20), FEATURES)
    with pytest.raises(Exception, match="no_such_column"):
        training.split(job, SPLIT, ["no_such_column"])["train"].to_df()
    with pytest.raises(MalformedParameterError, match="lower <= upper"):
        RowSelection(keys=("driver_id",), lower=0.6, upper=0.2)
    with pytest.raises(MalformedParameterError, match="seed is a whole number"):
        RowSelection.from_json('{"keys": ["driver_id"], "seed": null}')
    with pytest.raises(MalformedParameterError, match="1 to 1024 shards"):
        RowSelection(keys=("driver_id",), shards=0)
