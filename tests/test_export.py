"""A training set exported on the server: ``to_remote_storage()`` through
flightlab's client writes the result as parquet files under the server's
export location (a folder, or a bucket of the loopback S3 server) and returns
their URIs; the files hold exactly what ``to_arrow()`` gives.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from feast import FeatureStore
from object_storage_helpers import s3_credentials
from offline_helpers import ENTITY_KEYS, FEATURES, assert_same_rows, make_client_store

from flightlab.dispatch.exports import ExportLocation
from flightlab.engine.results import ResultStream
from flightlab.operations.options import ServiceOptions
from flightlab.server import OfflineServer
from flightlab.testing.s3 import S3Server
from flightlab.testing.sample_repo import entity_frame
from flightlab.wire.flight_errors import ExportNotConfiguredError

BUCKET = "exports"


def _exporting_server(repo: Path, location: str) -> OfflineServer:
    service = ServiceOptions(export_location=location)
    return OfflineServer(repo, host="127.0.0.1", port=0, service=service)


@pytest.fixture(scope="module")
def export_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exported").resolve()


@pytest.fixture(scope="module")
def folder_server(server_repo, export_folder) -> Iterator[OfflineServer]:
    with _exporting_server(server_repo, str(export_folder)) as server:
        yield server


@pytest.fixture(scope="module")
def exporting(folder_server, server_repo, tmp_path_factory) -> FeatureStore:
    client_repo = tmp_path_factory.mktemp("export_client").resolve() / "client"
    return make_client_store(client_repo, folder_server.port, server_repo)


def _read(files: list[str], filesystem: pafs.FileSystem | None = None) -> pa.Table:
    paths = [f.removeprefix("s3://") for f in files]
    return pa.concat_tables(pq.read_table(p, filesystem=filesystem) for p in paths)


def test_an_export_holds_what_to_arrow_gives(exporting, local_store, export_folder):
    entities = entity_frame(40, seed=8)
    job = exporting.get_historical_features(entities, FEATURES)

    assert job.supports_remote_storage_export()
    files = job.to_remote_storage()

    assert files and all(Path(f).is_relative_to(export_folder) for f in files)
    exported = _read(files)
    assert exported.schema.equals(job.to_arrow().schema)
    assert_same_rows(job.to_df(), exported.to_pandas(), ENTITY_KEYS)
    expected = local_store.get_historical_features(entities, FEATURES).to_df()
    assert_same_rows(expected, exported.to_pandas(), ENTITY_KEYS)


def test_two_exports_get_folders_of_their_own(exporting, export_folder):
    entities = entity_frame(10, seed=9)
    first = exporting.get_historical_features(entities, FEATURES).to_remote_storage()
    second = exporting.get_historical_features(entities, FEATURES).to_remote_storage()

    assert Path(first[0]).parent != Path(second[0]).parent
    assert_same_rows(_read(first).to_pandas(), _read(second).to_pandas(), ENTITY_KEYS)


def test_a_server_without_an_export_location_says_how_to_give_one(client_store):
    job = client_store.get_historical_features(entity_frame(5), FEATURES)

    assert not job.supports_remote_storage_export()
    with pytest.raises(ExportNotConfiguredError, match="--export-location"):
        job.to_remote_storage()


def test_a_failed_export_leaves_no_folder(exporting, export_folder, folder_server):
    before = set(export_folder.iterdir())
    with pytest.raises(Exception, match="no_such_view"):
        exporting.get_historical_features(
            entity_frame(5), ["no_such_view:conv_rate"]
        ).to_remote_storage()
    assert set(export_folder.iterdir()) == before
    assert len(folder_server.staging) == 0


def test_a_large_export_is_cut_into_files_of_the_set_size(tmp_path):
    table = pa.table({"k": pa.array(range(10_000), pa.int64()), "v": pa.array([0.5] * 10_000)})
    result = ResultStream(table.schema, iter(table.to_batches(max_chunksize=1_000)), "test")

    files, rows = ExportLocation(str(tmp_path), max_file_bytes=40_000).write(result, "cut")

    assert rows == 10_000
    assert [Path(f).name for f in files] == [f"part-{i:05d}.parquet" for i in range(len(files))]
    assert len(files) == 4  # 16 kB a batch: a file closes past 40 kB, at 3 batches
    assert _read(files).equals(table)


def test_an_export_to_object_storage(server_repo, local_store, tmp_path):
    with S3Server(log=tmp_path / "s3.log") as s3, s3_credentials(s3):
        s3.create_bucket(BUCKET)
        location = f"s3://{BUCKET}/training?endpoint_override={s3.host}:{s3.port}&scheme=http"
        with _exporting_server(server_repo, location) as server:
            store = make_client_store(tmp_path / "client", server.port, server_repo)
            entities = entity_frame(30, seed=10)
            files = store.get_historical_features(entities, FEATURES).to_remote_storage()

        assert all(f.startswith(f"s3://{BUCKET}/training/") for f in files)
        filesystem = pafs.S3FileSystem(
            endpoint_override=f"{s3.host}:{s3.port}", scheme="http", region="us-east-1"
        )
        exported = _read(files, filesystem).to_pandas()
    expected = local_store.get_historical_features(entities, FEATURES).to_df()
    assert_same_rows(expected, exported, ENTITY_KEYS)
