"""A server run as a service: its gRPC health answers and its Prometheus metrics.

Real servers on loopback ports; the health port is asked what a Kubernetes
``grpc:`` probe asks, and the metrics port is scraped over HTTP as Prometheus
does, after a workload whose counts are known.
"""

from __future__ import annotations

import time
import urllib.request

import grpc
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from feast.errors import FeatureViewNotFoundException
from offline_helpers import ENTITY_KEYS, FEATURES, assert_same_rows, make_client_store, pull
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import health_status, healthcheck_action

from flightlab.client.transport import OfflineFlightClient
from flightlab.errors import ServerDrainingError
from flightlab.operations.options import ServiceOptions
from flightlab.server import OfflineServer
from flightlab.testing.sample_repo import entity_frame
from flightlab.wire import protocol


def _wait_for(predicate, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_health_is_serving_once_ready_not_serving_while_draining_and_gone_once_stopped(
    server_repo, local_store
):
    options = ServiceOptions(health_port=0)
    server = OfflineServer(server_repo, port=0, service=options).start()
    try:
        health_port = server.health_port
        _wait_for(lambda: health_status(health_port) == "SERVING")
        # Flight's own service name answers the same, and the Flight action agrees.
        assert health_status(health_port, "arrow.flight.protocol.FlightService") == "SERVING"
        action = healthcheck_action(server.location)
        assert action["status"] == "SERVING" and action["ready"] and not action["draining"]
        assert "registry loaded" in action["detail"]
        with pytest.raises(grpc.RpcError) as unknown:
            health_status(health_port, "no.such.Service")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        server.begin_drain()
        assert health_status(health_port) == "NOT_SERVING"
        assert healthcheck_action(server.location)["status"] == "NOT_SERVING"
        # A new command is refused as "unavailable"; the probe still answers.
        entities = pa.Table.from_pandas(entity_frame(5, seed=5))
        with OfflineFlightClient(server.location, timeout=60) as client:
            with pytest.raises(ServerDrainingError, match="draining"):
                client.fetch(
                    protocol.GetHistoricalFeatures(features=tuple(FEATURES), entity_df=entities)
                )
        assert len(server.staging) == 0
    finally:
        server.stop()
    with pytest.raises(grpc.RpcError) as stopped:
        health_status(health_port)
    assert stopped.value.code() == grpc.StatusCode.UNAVAILABLE


def test_health_stays_not_serving_while_the_offline_store_cannot_answer(tmp_path):
    from flightlab.testing.sample_repo import create_sample_repo

    repo = create_sample_repo(tmp_path / "repo", "duckdb")
    for table in ("driver_stats", "customer_stats"):  # the sources' files are gone
        (repo / "data" / f"{table}.parquet").unlink()
    with OfflineServer(repo, port=0, service=ServiceOptions(health_port=0)) as server:
        _wait_for(lambda: "not ready" in healthcheck_action(server.location)["detail"])
        assert health_status(server.health_port) == "NOT_SERVING"
        assert "_stats.parquet" in healthcheck_action(server.location)["detail"]


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples, name: str, **labels) -> float:
    """A sample of the scrape; a missing one fails, naming what was there."""
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        present = sorted({n for n, _ in samples if n.startswith("flightlab_")})
        pytest.fail(f"no sample {name}{labels} in the scrape; its flightlab metrics: {present}")
    return samples[key]


GAUGES = (
    "flightlab_staged_commands",
    "flightlab_staged_bytes",
    "flightlab_workers",
    "flightlab_workers_busy",
    "flightlab_worker_queue_depth",
    "flightlab_in_flight",
    "flightlab_draining",
    "flightlab_ready",
    "flightlab_reuse_hits",
    "flightlab_reuse_bytes",
)


def test_a_scrape_after_a_mixed_workload_counts_requests_rows_bytes_and_errors(
    server_repo, local_store, tmp_path
):
    options = ServiceOptions(metrics_port=0)
    with OfflineServer(server_repo, port=0, service=options) as server:
        client_store = make_client_store(tmp_path / "client", server.port, server_repo)
        sizes = (7, 11)
        for rows in sizes:
            entities = entity_frame(rows, seed=rows)
            assert_same_rows(
                local_store.get_historical_features(entities, FEATURES).to_df(),
                client_store.get_historical_features(entities, FEATURES).to_df(),
                ENTITY_KEYS,
            )
        pulled = pull(client_store, "pull_all_from_table_or_query").to_arrow()
        # The first retrieval again: answered from the server's kept result.
        client_store.get_historical_features(entity_frame(7, seed=7), FEATURES).to_df()
        unknown_view = protocol.GetHistoricalFeatures(
            features=("no_view:x",), entity_df=pa.Table.from_pandas(entity_frame(3))
        )
        with OfflineFlightClient(server.location, timeout=60) as client:
            with pytest.raises(FeatureViewNotFoundException):
                client.fetch(unknown_view)
        # An upload refused before it is staged: a do_put without the protocol's metadata.
        raw = flight.FlightClient(server.location)
        writer, _ = raw.do_put(
            protocol.command_descriptor(protocol.new_command_id()), pa.schema([("x", "int64")])
        )
        with pytest.raises(flight.FlightServerError):
            writer.close()
        raw.close()

        samples = _scrape(server.metrics_port)
        staged = _scrape_with_a_command_staged(server)

    hist = "get_historical_features"
    # flightlab's engine answered both retrievals; the unknown view was refused
    # while planning, before any engine was chosen.
    ok = {"api": hist, "engine": "flightlab", "outcome": "ok"}
    assert _value(samples, "flightlab_requests_total", **ok) == 3  # one from the kept result
    assert _value(samples, "flightlab_reuse_hits") == 1
    assert _value(samples, "flightlab_reuse_misses") == 3  # two retrievals and the pull
    assert _value(samples, "flightlab_reuse_entries") == 3
    assert _value(samples, "flightlab_reuse_bytes") > 0
    refused = {"api": hist, "engine": "none", "outcome": "error"}
    assert _value(samples, "flightlab_requests_total", **refused) == 1
    assert _value(samples, "flightlab_request_seconds_count", api=hist, engine="flightlab") == 3
    assert _value(samples, "flightlab_request_seconds_count", api=hist, engine="none") == 1
    assert _value(samples, "flightlab_rows_in_total", api=hist) == sum(sizes) + 7
    assert _value(samples, "flightlab_rows_out_total", api=hist) == sum(sizes) + 7
    assert _value(samples, "flightlab_bytes_in_total", api=hist) > 0
    assert _value(samples, "flightlab_bytes_out_total", api=hist) > 0
    pull_all = "pull_all_from_table_or_query"
    assert _value(samples, "flightlab_rows_out_total", api=pull_all) == pulled.num_rows
    # Three parameters staged by do_put (features, entity_df, full_feature_names) per retrieval.
    assert _value(samples, "flightlab_staged_params_total", api=hist) == 4 * 3
    assert (
        _value(
            samples, "flightlab_errors_total", api=hist, error_class="FeatureViewNotFoundException"
        )
        == 1
    )
    assert (
        _value(samples, "flightlab_errors_total", api="do_put", error_class="MissingParameterError")
        == 1
    )
    # Gauges at scrape time: nothing left staged or queued, four idle workers.
    assert {name for name, _ in samples} >= set(GAUGES)
    assert _value(samples, "flightlab_staged_commands") == 0
    assert _value(samples, "flightlab_staged_bytes") == 0
    assert _value(samples, "flightlab_worker_queue_depth") == 0
    assert _value(samples, "flightlab_workers") == 4
    assert _value(samples, "flightlab_draining") == 0
    # A command staged and not run shows in the gauges; once dropped, it is gone.
    before, after = staged
    assert _value(before, "flightlab_staged_commands") == 1
    assert _value(before, "flightlab_staged_bytes") > 0
    assert _value(after, "flightlab_staged_commands") == 0
    assert _value(after, "flightlab_staged_bytes") == 0


def _scrape_with_a_command_staged(server: OfflineServer) -> tuple[dict, dict]:
    """Scrapes while a retrieval is staged but not run, and after it is dropped."""
    request = protocol.GetHistoricalFeatures(
        features=tuple(FEATURES), entity_df=pa.Table.from_pandas(entity_frame(20, seed=20))
    )
    with OfflineFlightClient(server.location, timeout=60) as client:
        command_id = client.stage(request)
        before = _scrape(server.metrics_port)
        assert client.drop(command_id)
        after = _scrape(server.metrics_port)
    return before, after
