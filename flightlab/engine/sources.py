"""Which data sources the engine reads.

:func:`source_reader` says whether the engine answers for a Feast data source
on a repo's offline store (and with which ``--engine`` mode), and returns its
:class:`~flightlab.engine.reading.SourceReader`. Each kind of source lives in
a module of its own (:mod:`~flightlab.engine.parquet` for local parquet files,
:mod:`~flightlab.engine.object_store` for parquet objects in S3,
:mod:`~flightlab.engine.postgres` for PostgreSQL tables and queries).
"""

from __future__ import annotations

from typing import Any

from flightlab.engine.object_store import object_store_parquet
from flightlab.engine.parquet import local_parquet
from flightlab.engine.reading import SourceReader
from flightlab.engine.settings import REPLACEABLE_STORES, SAME_ANSWER_STORES, EngineMode


def source_reader(
    data_source: Any, config: Any, mode: EngineMode, postgres: Any = None
) -> SourceReader | None:
    """The reader of ``data_source`` on a repo of ``config``, or None when the
    repo's Feast store answers for it (``mode`` says when the engine may).
    On a postgres repo, ``postgres`` (the engine's ``PostgresEngine``) reads
    PostgreSQL sources, with the postgres store's answers in either mode."""
    if mode is EngineMode.FEAST:
        return None
    store_type = config.offline_store.type
    if store_type == "postgres":
        return postgres.reader(data_source, config) if postgres is not None else None
    if store_type in SAME_ANSWER_STORES or (
        mode is EngineMode.FLIGHTLAB and store_type in REPLACEABLE_STORES
    ):
        return local_parquet(data_source, config.repo_path) or object_store_parquet(data_source)
    if store_type in REPLACEABLE_STORES:
        # Parquet in S3 on the dask store, even in auto mode: that store reads
        # s3:// only through s3fs, which flightlab does not install.
        return object_store_parquet(data_source)
    return None
