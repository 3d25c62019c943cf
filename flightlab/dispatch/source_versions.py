"""Which source a kept result read, and which version of it: what lets the
server keep a result (:mod:`~flightlab.dispatch.reuse`) and know when it is stale.

- A parquet file or folder on the server's disk: named by its resolved path;
  its version is each file's size and modification time (nanoseconds).
- Parquet objects in S3 (``s3://``): named by their URI; the version is each
  object's key, size and ETag, asked of the store with a HEAD per object,
  with the endpoint and credentials the engine reads them with.
- Anything else (a database table, Spark, a source Feast alone reads) has no
  version the server can learn cheaply: a result that read it is not kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from feast.data_source import DataSource
from feast.infra.offline_stores.file_source import FileSource

from flightlab.engine.object_store import SCHEME, object_store_parquet


@dataclass(frozen=True)
class SourceVersion:
    name: str  # the resolved path or the URI: what a write is matched by
    version: tuple


def source_name(source: DataSource, repo: Path | None) -> str | None:
    """The path or URI ``source`` reads, when the server can version it; no I/O."""
    if type(source) is not FileSource or not source.path:
        return None
    if source.path.startswith(SCHEME):
        return source.path.rstrip("/") if object_store_parquet(source) else None
    if "://" in source.path:
        return None  # gs://, hdfs://... : read by Feast's stores alone
    path = Path(source.path)
    if not path.is_absolute() and repo is not None:
        path = repo / path
    return str(path.resolve())


def source_version(source: DataSource, repo: Path | None) -> SourceVersion | None:
    """``source``'s name and current version; None when it has none, or the
    store holding it cannot tell (the retrieval then meets and names the problem)."""
    name = source_name(source, repo)
    if name is None:
        return None
    if name.startswith(SCHEME):
        try:
            return SourceVersion(name, object_store_parquet(source).version())
        except Exception:  # unreachable, refused, missing: not kept, and the read says why
            return None
    return SourceVersion(name, _files_version(Path(name)))


def _files_version(path: Path) -> tuple:
    """Each file's size and modification time (a folder's files, by name)."""
    if path.is_file():
        stat = path.stat()
        return ((str(path), stat.st_size, stat.st_mtime_ns),)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
