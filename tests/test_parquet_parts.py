"""A result too large to hold, written to a folder of parquet files as it
streams from the server: the files together equal the local answer."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
from offline_helpers import ENTITY_KEYS, FEATURES, assert_same_rows

from flightlab.client.parquet_parts import write_parquet_parts
from flightlab.errors import MalformedEntityDataError
from flightlab.testing.sample_repo import entity_frame


def test_a_result_streams_into_parquet_files_of_bounded_size_equal_to_local(
    client_store, local_store, tmp_path
):
    entities = entity_frame(400, seed=21)
    expected = local_store.get_historical_features(entities, FEATURES).to_df()
    job = client_store.get_historical_features(entities, FEATURES)
    seen = []
    limit = 4_000  # bytes of Arrow data per file: the shared server sends 16-row batches
    files = job.to_parquet(tmp_path / "result", max_file_bytes=limit, progress=seen.append)

    assert len(files) > 3, files
    assert [f.name for f in files] == [f"part-{i:05d}.parquet" for i in range(len(files))]
    assert sorted(p.name for p in (tmp_path / "result").iterdir()) == [f.name for f in files]
    batch_bytes = max(b.nbytes for f in files for b in pq.read_table(f).to_batches())
    for file in files[:-1]:
        assert limit <= pq.read_table(file).nbytes <= limit + batch_bytes, file
    got = pa.concat_tables(pq.read_table(f) for f in files).to_pandas()
    assert list(got.columns) == list(expected.columns)
    assert_same_rows(expected, got, ENTITY_KEYS)
    assert seen and seen[-1].rows == len(expected)


def test_a_folder_that_holds_parquet_files_is_refused_and_left_as_it_was(client_store, tmp_path):
    folder = tmp_path / "result"
    folder.mkdir()
    (folder / "part-00000.parquet").write_bytes(b"an earlier result")
    job = client_store.get_historical_features(entity_frame(10), FEATURES)
    with pytest.raises(FileExistsError, match="already holds parquet files"):
        job.to_parquet(folder)
    assert [p.name for p in folder.iterdir()] == ["part-00000.parquet"]
    assert (folder / "part-00000.parquet").read_bytes() == b"an earlier result"


def test_a_stream_that_fails_midway_leaves_no_file_behind(tmp_path):
    def batches():
        for i in range(5):
            yield pa.record_batch({"x": pa.array(range(i * 100, i * 100 + 100))})
        raise ConnectionError("the server went away")

    with pytest.raises(ConnectionError, match="went away"):
        write_parquet_parts(batches(), tmp_path / "result", max_file_bytes=1_000)
    assert list((tmp_path / "result").iterdir()) == []


def test_entity_rows_the_server_refuses_are_named_and_nothing_is_written(client_store, tmp_path):
    entities = entity_frame(10).drop(columns=["customer_id"])  # customer_stats joins on it
    job = client_store.get_historical_features(entities, FEATURES)
    with pytest.raises(flight.FlightServerError, match="customer_id") as refused:
        job.to_parquet(tmp_path / "result")
    assert isinstance(refused.value, MalformedEntityDataError)
    assert list((tmp_path / "result").iterdir()) == []
