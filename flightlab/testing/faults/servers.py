"""The servers the fault drills run against, and the calls every drill makes.

Each server is ``python -m flightlab -c REPO serve_offline --port 0`` in a
child process (:mod:`flightlab.testing.processes`), so a drill can SIGKILL it
and read its RSS from ``/proc``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from flightlab.client.transport import OfflineFlightClient
from flightlab.testing.processes import ServerProcess, running_servers, serve_offline_command
from flightlab.testing.sample_repo import DAYS, START, entity_frame
from flightlab.wire import protocol


@contextmanager
def server_process(repo: Path, *options: str, log: Path | None = None) -> Iterator[ServerProcess]:
    """`python -m flightlab -c REPO serve_offline --port 0 OPTIONS`, until its serving line."""
    with server_processes(repo, 1, *options, log=log) as [server]:
        yield server


@contextmanager
def server_processes(
    repo: Path, n: int, *options: str, log: Path | None = None
) -> Iterator[list[ServerProcess]]:
    """``n`` servers of one repo, started side by side; all stopped at the end."""
    command = serve_offline_command(repo, "--log-level", "warning", *options)
    with running_servers([command] * n, log=log, stop_timeout=30) as servers:
        yield servers


def drill_options(
    staged_ttl: float = 3.0, max_entity_rows: int = 1_000_000, max_param_bytes: int = 4 * 1024**2
) -> tuple[str, ...]:
    """serve_offline options of the server the last three drills run against."""
    return (
        *("--staged-ttl", str(staged_ttl), "--batch-rows", "1000"),
        *("--max-entity-rows", str(max_entity_rows), "--max-param-bytes", str(max_param_bytes)),
    )


def write(client: OfflineFlightClient, table: pa.Table) -> None:
    """An offline write of ``table`` into the driver_stats view."""
    client.run_action(protocol.OfflineWriteBatch(feature_view_name="driver_stats", table=table))


def pull_request() -> protocol.PullLatestFromTableOrQuery:
    """A pull of the latest driver stats over the whole sample range."""
    return protocol.PullLatestFromTableOrQuery(
        data_source_name="driver_stats_source",
        join_key_columns=("driver_id",),
        feature_name_columns=("conv_rate", "acc_rate"),
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
        start_date=START,
        end_date=START + timedelta(days=DAYS + 1),
    )


def stats(location: str) -> dict[str, Any]:
    """The server's ``stats`` action."""
    with OfflineFlightClient(location, timeout=30) as client:
        return client.stats()


def good_request_answers(location: str) -> bool:
    """Whether a small, good retrieval gets all its rows."""
    entities = entity_frame(50, seed=21)
    request = protocol.GetHistoricalFeatures(
        features=("driver_stats:conv_rate",), entity_df=pa.Table.from_pandas(entities)
    )
    with OfflineFlightClient(location, timeout=60) as client:
        return client.fetch(request).num_rows == len(entities)
