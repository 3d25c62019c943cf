"""Crash-safe, cross-process writes of parquet files.

Feast's file and duckdb stores append to a parquet source by rewriting the
file in place, with nothing between processes: two writers, or a crash in the
middle, leave a torn or empty file and every row in it is lost. The writes
here take a lock per destination file that every process honours (``filelock``:
an OS lock, released when its holder dies, SIGKILL included), build the new
content in a temporary file in the same folder, flush it to disk and rename it
over the old one. A reader, or whoever comes after a crash, sees the old file
or the new one, never a part of one; once a call returns, its rows are on disk.

The temporary files are hidden (a leading dot), so Arrow and duckdb dataset
scans skip them; one left by a killed writer is removed by the next writer.

No wait is unbounded: a writer gives up on another writer's lock after
``DEFAULT_LOCK_TIMEOUT`` and on the readers of the file (a retrieval holds
them until its client has read the last batch, and a client may stop reading)
after ``SWAP_LOCK_TIMEOUT``, with :class:`ServerBusyError`: retry later.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from flightlab.errors import ParquetWriteError, ServerBusyError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

# How long a writer waits for another one's lock before giving up: writers
# queue behind each other, and a rewrite of a large file takes a while.
DEFAULT_LOCK_TIMEOUT = 600.0
# How long a writer waits for the readers of a file to let it go before the
# rename. Readers hold it only while they read, but a retrieval's client that
# stops reading holds it until the server gives up on its stream; the writer
# meanwhile holds its destination lock and a worker.
SWAP_LOCK_TIMEOUT = 60.0
# The first and the longest pause between two tries of the swap lock: short,
# as a reader that polls the file may leave only brief gaps between its reads.
_SWAP_POLL_FIRST = 0.001
_SWAP_POLL_MAX = 0.01
_TEMP_SUFFIX = ".tmp.parquet"


def lock_path(path: str | Path) -> Path:
    """The lock file guarding writes to ``path`` (beside it, hidden)."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def swap_lock_path(path: str | Path) -> Path:
    """The lock file readers of ``path`` share and its rename takes alone."""
    path = Path(path)
    return path.parent / f".{path.name}.swap.lock"


@contextmanager
def destination_lock(path: str | Path, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the cross-process write lock of ``path``, then clear stale temp files.

    Every temporary file of ``path`` is written under this lock, so one found
    while holding it belongs to a writer that died.
    """
    path = Path(path)
    try:
        lock = FileLock(str(lock_path(path)), timeout=timeout).acquire()
    except Timeout:
        raise ServerBusyError(
            f"another writer has held the write lock of {path} for {timeout:g} s; retry later"
        ) from None
    with lock:
        for stale in path.parent.glob(f".{path.name}.*{_TEMP_SUFFIX}"):
            stale.unlink(missing_ok=True)
        yield


def replace_atomically(
    path: str | Path, write: Callable[[Path], None], swap_timeout: float | None = None
) -> None:
    """Have ``write`` fill a temporary file, make it durable, rename it to ``path``.

    The caller holds :func:`destination_lock` of ``path``. The rename waits
    for the readers inside :func:`reading` of ``path`` to finish, at most
    ``swap_timeout`` seconds (default ``SWAP_LOCK_TIMEOUT``); then it raises
    :class:`ServerBusyError` and ``path`` is left as it was.
    """
    path = Path(path)
    temp = path.parent / f".{path.name}.{uuid.uuid4().hex}{_TEMP_SUFFIX}"
    try:
        write(temp)
        _fsync_file(temp)
        timeout = SWAP_LOCK_TIMEOUT if swap_timeout is None else swap_timeout
        with _swap_lock(path, exclusive=True, timeout=timeout):
            os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


@contextmanager
def reading(paths: Iterable[str | Path]) -> Iterator[None]:
    """Keep ``paths`` from being replaced while the caller reads them.

    A rename is atomic, but a reader that opens a path more than once during
    one read (duckdb's parallel parquet scan does) could otherwise mix the old
    file and the new one. Readers share the lock; a writer waits only for the
    rename itself.
    """
    with ExitStack() as stack:
        for path in sorted({str(Path(p)) for p in paths}):  # one order: no deadlock
            stack.enter_context(_swap_lock(Path(path), exclusive=False))
        yield


@contextmanager
def _swap_lock(path: Path, exclusive: bool, timeout: float = SWAP_LOCK_TIMEOUT) -> Iterator[None]:
    """The lock readers of ``path`` share and its rename takes alone.

    A reader waits without a bound: the lock is held alone only for a rename.
    A writer tries without blocking, pausing between tries, for ``timeout``
    seconds: a blocking flock could wait forever behind a stalled reader.
    """
    if fcntl is None:  # no flock (Windows): renames are still atomic
        yield
        return
    descriptor = os.open(swap_lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if exclusive:
            _lock_exclusive(descriptor, path, timeout)
        else:
            fcntl.flock(descriptor, fcntl.LOCK_SH)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _lock_exclusive(descriptor: int, path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pause = _SWAP_POLL_FIRST
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise ServerBusyError(
                f"cannot write {path}: readers still hold it after {timeout:g} s "
                "(a retrieval of it whose client has not read its whole result); "
                "the file is unchanged, retry later"
            )
        time.sleep(min(pause, left))
        pause = min(pause * 2, _SWAP_POLL_MAX)


def write_parquet_atomically(path: str | Path, table: pa.Table) -> None:
    """Write ``table`` as the parquet file ``path``, replacing it whole or not at all."""
    with destination_lock(path):
        replace_atomically(path, lambda temp: pq.write_table(table, temp))


def append_to_parquet_source(
    path: str | Path,
    table: pa.Table,
    *,
    timestamp_unit: str | None = None,
    keep_metadata: bool = True,
) -> int:
    """Append ``table`` to the parquet file ``path``; return the rows it then holds.

    The rows come out as Feast's own stores leave them: the new rows first,
    cast to the file's schema. ``timestamp_unit`` (``"us"`` for the duckdb
    store, whose writer keeps microseconds) recasts timestamp columns;
    ``keep_metadata=False`` drops the schema metadata (pandas'), which the
    duckdb writer does not keep either.
    """
    with destination_lock(path):
        old = pq.read_table(path)
        if table.column_names != old.column_names:
            raise ParquetWriteError(
                f"the rows have the incorrect columns {table.column_names}: {Path(path).name} "
                f"holds the columns (in this exact order) {old.column_names}"
            )
        if table.schema != old.schema:
            table = table.cast(old.schema)
        combined = pa.concat_tables([table, old])
        combined = _normalized(combined, timestamp_unit, keep_metadata)
        replace_atomically(path, lambda temp: pq.write_table(combined, temp))
        return combined.num_rows


def add_files_atomically(
    folder: str | Path,
    table: pa.Table,
    partitioning: list[str] | None = None,
    *,
    timestamp_unit: str | None = None,
    keep_metadata: bool = True,
) -> list[Path]:
    """Write ``table`` as new parquet files under ``folder`` (hive-partitioned by
    ``partitioning``), each appearing whole or not at all; return their paths.

    The files are built in a hidden folder beside ``folder`` and renamed into
    it. ``timestamp_unit`` and ``keep_metadata`` as for
    :func:`append_to_parquet_source`.
    """
    folder = Path(folder)
    table = _normalized(table, timestamp_unit, keep_metadata)
    _make_folders_durably(folder)
    staging = folder.parent / f".{folder.name}.{uuid.uuid4().hex}.tmp"
    try:
        ds.write_dataset(
            table,
            base_dir=str(staging),
            basename_template=f"{uuid.uuid4().hex}-{{i}}.parquet",
            partitioning=partitioning or None,
            partitioning_flavor="hive" if partitioning else None,
            format="parquet",
            use_threads=False,
        )
        return [_move_in(file, staging, folder) for file in sorted(staging.rglob("*.parquet"))]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_in(file: Path, staging: Path, folder: Path) -> Path:
    target = folder / file.relative_to(staging)
    _make_folders_durably(target.parent)
    _fsync_file(file)
    os.replace(file, target)
    _fsync_dir(target.parent)
    return target


def _make_folders_durably(folder: Path) -> None:
    """Create ``folder`` and its missing parents, each durable: a new folder
    is on disk only once the entry in its parent is, so each parent is
    fsynced after its new child is made (a partition folder ``day=...``
    would otherwise vanish at power loss with the rows acknowledged in it)."""
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.is_dir():
            break
        missing.append(candidate)
    for new in reversed(missing):  # outermost first
        # exist_ok: another writer may make it meanwhile; sync its parent anyway,
        # as this write is acknowledged perhaps before that writer's sync.
        new.mkdir(exist_ok=True)
        _fsync_dir(new.parent)


def _normalized(table: pa.Table, timestamp_unit: str | None, keep_metadata: bool) -> pa.Table:
    if timestamp_unit is not None:
        fields = [
            pa.field(f.name, pa.timestamp(timestamp_unit, tz=f.type.tz), f.nullable)
            if pa.types.is_timestamp(f.type)
            else f
            for f in table.schema
        ]
        table = table.cast(pa.schema(fields, metadata=table.schema.metadata), safe=False)
    if not keep_metadata:
        table = table.replace_schema_metadata(None)
    return table


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    # The rename itself is durable only once the folder's entry is on disk.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
