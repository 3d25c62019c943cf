"""SIGTERM during a running retrieval: it finishes, new commands are refused, exit 0.

A real ``flightlab serve_offline`` process. The retrieval's result is large
enough that its stream is still being sent (gRPC flow control holds it) while
the client reads it slowly; the signal comes after the first batch.
"""

from __future__ import annotations

import signal
import sys
import time

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from offline_helpers import ENTITY_KEYS, FEATURES, assert_same_rows
from service_helpers import health_status, healthcheck_action, server_process

from flightlab.client.transport import OfflineFlightClient
from flightlab.errors import ServerDrainingError
from flightlab.testing.sample_repo import entity_frame
from flightlab.wire import protocol

ROWS = 200_000


def test_sigterm_lets_a_running_retrieval_finish_refuses_new_ones_and_exits_0(
    server_repo, local_store, tmp_path
):
    command = [sys.executable, "-m", "flightlab", "-c", str(server_repo), "serve_offline"]
    command += ["-p", "0", "--health-port", "0", "--batch-rows", "1024", "--drain-seconds", "120"]
    entities = entity_frame(ROWS, seed=91)
    request = protocol.GetHistoricalFeatures(
        features=tuple(FEATURES), entity_df=pa.Table.from_pandas(entities)
    )
    with server_process(command, tmp_path, side_ports=("health",)) as server:
        health_port = server.side_ports["health"]
        with OfflineFlightClient(server.location, timeout=300) as client:
            batches = client.iter_batches(request)
            received = [next(batches)]
            # The stream is in flight (the healthcheck call itself is the other one).
            assert healthcheck_action(server.location)["in_flight"] >= 2

            server.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while health_status(health_port) != "NOT_SERVING":
                assert time.monotonic() < deadline, "health never said NOT_SERVING"
                time.sleep(0.1)
            # A new command is refused as unavailable, by both kinds of client.
            small = protocol.GetHistoricalFeatures(
                features=tuple(FEATURES), entity_df=pa.Table.from_pandas(entity_frame(3))
            )
            with OfflineFlightClient(server.location, timeout=30) as other:
                with pytest.raises(ServerDrainingError, match="draining"):
                    other.fetch(small)
            raw = flight.FlightClient(server.location)
            with pytest.raises(flight.FlightUnavailableError, match="draining"):
                writer, _ = raw.do_put(
                    protocol.command_descriptor(protocol.new_command_id()),
                    pa.schema([("x", "int64")]),
                )
                writer.close()
            raw.close()

            received.extend(batches)  # the running retrieval still completes
        assert server.process.wait(timeout=120) == 0

    got = pa.Table.from_batches(received).to_pandas()
    assert len(got) == ROWS
    expected = local_store.get_historical_features(entities, FEATURES).to_df()
    assert_same_rows(expected, got, ENTITY_KEYS)
    log = server.log()
    assert "SIGTERM received" in log and "draining: " in log
    assert "cutting" not in log and "Traceback" not in log
