"""Folders under the spill root, named for the process that made them, and the
sweep of those a killed server left behind.

A request's DuckDB spill folder and a Spark result's parquet folder are
removed when their request ends, however it ends, unless the server is
killed (SIGKILL, the OOM killer, a lost machine): then they stay, and a join
at 10M rows can leave gigabytes. Each folder's name carries the host and the
process id of the server that made it; a server starting sweeps the folders
of its own host whose process is no longer running. Folders of live
processes (replicas sharing the root) and of other hosts (a shared mount) are
left alone, as is anything whose name is not one of these.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

KINDS = ("request", "spark-result")
_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
_NAME = re.compile(
    rf"^(?:{'|'.join(map(re.escape, KINDS))})-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{{32}}$"
)


def default_spill_root(configured: Path | None) -> Path:
    """``--spill-dir``, or ``flightlab-spill`` in the system's temporary folder."""
    return configured or Path(tempfile.gettempdir()) / "flightlab-spill"


def owned_folder(root: Path, kind: str) -> Path:
    """A new folder's path under ``root`` (not made: DuckDB and Spark make
    their own), named for this host and process."""
    if kind not in KINDS:
        raise ValueError(f"no spill folder kind {kind!r}")
    return root / f"{kind}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex}"


def sweep_leftovers(root: Path) -> list[Path]:
    """Remove the folders under ``root`` that a process of this host made and
    that is no longer running; the folders removed."""
    if not root.is_dir():
        return []
    removed = []
    for entry in root.iterdir():
        match = _NAME.match(entry.name)
        if not match or match["host"] != _HOST or _running(int(match["pid"])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    if removed:
        logger.info("removed %d spill folder(s) left by stopped servers in %s", len(removed), root)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: running
    return True
