"""Where a ``persist`` writes, and which of the sources it reads it must lock.

A persist runs a retrieval and saves its result. The retrieval reads its
sources while the result is written, so their renames are held off meanwhile
(a concurrent write to a source would otherwise tear what the persist reads),
except the destination's own file: its rename, at the end of the persist,
would wait for the persist itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from feast import FeatureStore
from feast.data_source import DataSource
from feast.errors import FeastPermissionError
from feast.infra.offline_stores.file_source import FileSource, SavedDatasetFileStorage
from feast.saved_dataset import SavedDatasetStorage

from flightlab.dispatch.backends import saved_dataset_storage
from flightlab.dispatch.feast_objects import storage_from_bytes, storage_proto
from flightlab.wire import protocol


def persist_destination(
    store: FeatureStore, request: protocol.Persist, enforce_permissions: bool
) -> tuple[DataSource | None, SavedDatasetStorage]:
    """The registered source a persist writes to (None when unchecked) and its storage."""
    if request.destination_name is not None:
        destination = store.get_data_source(request.destination_name)
        return destination, saved_dataset_storage(destination)
    storage = storage_from_bytes(request.storage)
    if not enforce_permissions:
        # The destination is only checked with permissions; and some
        # storages (Spark's) cannot make an unnamed source.
        return None, storage
    # With permissions, a destination must be a registered data source, so
    # that the check is made against its real name and tags: a storage the
    # client makes up could name any file the server can write.
    wanted = storage.to_proto()
    registered = next((s for s in store.list_data_sources() if storage_proto(s) == wanted), None)
    if registered is None:
        raise FeastPermissionError(
            "persist may only write to a registered data source on a server with "
            f"authentication; {str(wanted).strip()!r} is not one"
        )
    return registered, storage


def sources_besides_destination(
    sources: Iterable[DataSource], storage: SavedDatasetStorage, repo_path: str | Path | None
) -> list[DataSource]:
    """``sources`` without those stored in the persist destination's file."""
    if not isinstance(storage, SavedDatasetFileStorage):
        return list(sources)
    destination = _local_file(storage.file_options.uri, repo_path)
    return [
        source
        for source in sources
        if not isinstance(source, FileSource)
        or destination is None
        or _local_file(source.path, repo_path) != destination
    ]


def _local_file(uri: str, repo_path: str | Path | None) -> Path | None:
    if "://" in uri:
        return None
    return Path(FileSource.get_uri_for_file_path(repo_path, uri)).resolve()
