"""`flightlab serve_offline` as an operator runs it: a subprocess on a free port.

It prints ``flightlab serving grpc+tcp://HOST:PORT`` on stdout once listening,
logs one line per request on stderr (API, command id, rows, duration), and
exits cleanly (code 0) on SIGTERM and on SIGINT.
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from feast.errors import FeatureViewNotFoundException
from offline_helpers import (
    ENTITY_KEYS,
    FEATURES,
    assert_same_rows,
    make_client_store,
    pull,
    run_flightlab,
    watching_spill,
)

from flightlab.cli import build_parser
from flightlab.cli_engine import engine_settings
from flightlab.client.transport import OfflineFlightClient
from flightlab.engine.settings import EngineMode, EngineSettings
from flightlab.testing.processes import ServerProcess, running_server
from flightlab.testing.sample_repo import entity_frame
from flightlab.wire import protocol
from flightlab.wire.headers import OWNER_HEADER

# Entity rows whose join outgrows a 16 MB DuckDB memory limit on one thread.
SPILLING_ROWS = 50_000
SERVING = re.compile(r"flightlab serving grpc\+tcp://127\.0\.0\.1:(\d+)")
# One line per request: "<api> command=<id> ... rows_in=N rows_out=N ... 0.123s".
REQUEST_LINE = re.compile(
    r"(?P<api>\w+) command=(?P<command>[0-9a-f-]{36}) .*"
    r"rows_in=(?P<rows_in>\d+) rows_out=(?P<rows_out>\d+) .*?(?P<seconds>\d+\.\d+)s$"
)


@contextmanager
def serve_offline(command: list[str], tmp_path: Path) -> Iterator[ServerProcess]:
    """Start the CLI; yield it once its 'serving' line is out (the first line
    it prints); never leave it running."""
    log = tmp_path / "serve_offline.stderr"
    with running_server(command, log=log, stop_signal=signal.SIGKILL) as cli:
        first_line = cli.stdout_lines[0]
        assert SERVING.fullmatch(first_line), f"unexpected first line {first_line!r}:\n{cli.log()}"
        yield cli


def test_the_module_serves_a_repo_logs_each_request_and_stops_on_sigterm(
    server_repo, local_store, tmp_path
):
    command = [sys.executable, "-m", "flightlab", "-c", str(server_repo)]
    with serve_offline([*command, "serve_offline", "--port", "0"], tmp_path) as cli:
        assert cli.port > 0

        # A data scientist's client repo pointed at the printed port.
        client_store = make_client_store(tmp_path / "client", cli.port, server_repo)
        entities = entity_frame(30, seed=71)
        assert_same_rows(
            local_store.get_historical_features(entities, FEATURES).to_df(),
            client_store.get_historical_features(entities, FEATURES).to_df(),
            ENTITY_KEYS,
        )

        # A request whose command id we know, and one the server refuses.
        fewer = entity_frame(9, seed=72)
        request = protocol.GetHistoricalFeatures(
            features=tuple(FEATURES), entity_df=pa.Table.from_pandas(fewer)
        )
        with OfflineFlightClient(cli.location, timeout=60, owner="cli-test") as client:
            command_id = client.stage(request)
            # Another connection holding the same owner secret may run it.
            raw = flight.FlightClient(cli.location)
            owner = flight.FlightCallOptions(headers=[(OWNER_HEADER.encode(), b"cli-test")])
            info = raw.get_flight_info(protocol.command_descriptor(command_id), owner)
            got = raw.do_get(info.endpoints[0].ticket, owner).read_pandas()
            raw.close()
            with pytest.raises(FeatureViewNotFoundException, match="no_such_view"):
                client.fetch(
                    protocol.GetHistoricalFeatures(
                        features=("no_such_view:x",), entity_df=pa.Table.from_pandas(fewer)
                    )
                )
        assert_same_rows(
            local_store.get_historical_features(fewer, FEATURES).to_df(), got, ENTITY_KEYS
        )

        assert cli.stop(signal.SIGTERM) == 0

    log = cli.log_lines()
    served = [m for m in map(REQUEST_LINE.search, log) if m]
    assert [m["api"] for m in served] == ["get_historical_features"] * 2
    assert [int(m["rows_in"]) for m in served] == [30, 9]
    assert [int(m["rows_out"]) for m in served] == [30, 9]
    assert all(float(m["seconds"]) < 60 for m in served)
    # The request we staged ourselves: exactly one line names its command id.
    [ours] = [line for line in log if command_id in line]
    assert REQUEST_LINE.search(ours)["command"] == command_id
    assert served[1]["command"] == command_id
    refused = [line for line in log if "rejected" in line]
    assert len(refused) == 1 and "FeatureViewNotFoundException" in refused[0]
    assert any("SIGTERM received" in line for line in log)
    assert not any("Traceback" in line for line in log)


def test_the_console_script_serves_and_stops_on_sigint(server_repo, local_store, tmp_path):
    script = Path(sys.executable).with_name("flightlab")
    assert script.is_file(), "the 'flightlab' console script is not installed in the venv"
    command = [str(script), "-c", str(server_repo), "serve_offline", "-h", "127.0.0.1", "-p", "0"]
    with serve_offline(command, tmp_path) as cli:
        entities = entity_frame(12, seed=73)
        with OfflineFlightClient(cli.location, timeout=60) as client:
            got = client.fetch(
                protocol.GetHistoricalFeatures(
                    features=tuple(FEATURES), entity_df=pa.Table.from_pandas(entities)
                )
            )
            assert client.stats()["staged_commands"] == 0
        assert_same_rows(
            local_store.get_historical_features(entities, FEATURES).to_df(),
            got.to_pandas(),
            ENTITY_KEYS,
        )

        assert cli.stop(signal.SIGINT) == 0

    log = cli.log_lines()
    assert len([line for line in log if REQUEST_LINE.search(line)]) == 1
    assert any("SIGINT received" in line for line in log)
    assert not any("Traceback" in line for line in log)


def test_serving_a_folder_without_a_repo_fails_with_a_message(tmp_path):
    run = run_flightlab("-c", str(tmp_path), "serve_offline", "--port", "0")
    assert run.returncode == 2
    assert "no feature_store.yaml" in run.stderr
    assert run.stdout == ""


@pytest.mark.parametrize(
    "option, message",
    [
        (["--engine-threads", "0"], "engine threads must be at least 1"),
        (["--engine-memory-limit", "lots"], "memory_limit"),
        (["--spill-max-size", "lots"], "spill_max_size"),
        (["--workers", "0"], "workers must be at least 1"),
    ],
)
def test_a_setting_out_of_range_fails_with_a_message(tmp_path, option, message):
    run = run_flightlab("-c", str(tmp_path), "serve_offline", *option)
    assert run.returncode == 2
    assert message in run.stderr
    assert "Traceback" not in run.stderr


# --- the engine options ------------------------------------------------------------------


def test_engine_options_parse_into_theengine_settings(tmp_path):
    args = build_parser({}).parse_args(
        [
            "serve_offline",
            "--engine",
            "flightlab",
            "--engine-threads",
            "3",
            "--engine-memory-limit",
            "1GB",
            "--spill-dir",
            str(tmp_path),
            "--spill-max-size",
            "20GB",
        ]
    )
    assert engine_settings(args) == EngineSettings(
        EngineMode.FLIGHTLAB, 3, "1GB", tmp_path, spill_max_size="20GB"
    )
    assert engine_settings(build_parser({}).parse_args(["serve_offline"])) == EngineSettings()


def test_engine_feast_has_feasts_own_store_answer(server_repo, local_store, tmp_path):
    command = [sys.executable, "-m", "flightlab", "-c", str(server_repo), "serve_offline"]
    with serve_offline([*command, "--port", "0", "--engine", "feast"], tmp_path) as cli:
        client_store = make_client_store(tmp_path / "client", cli.port, server_repo)
        entities = entity_frame(25, seed=74)
        assert_same_rows(
            local_store.get_historical_features(entities, FEATURES).to_df(),
            client_store.get_historical_features(entities, FEATURES).to_df(),
            ENTITY_KEYS,
        )
        expected = pull(local_store, "pull_all_from_table_or_query").to_df()
        got = pull(client_store, "pull_all_from_table_or_query").to_df()
        assert_same_rows(expected, got, list(expected.columns))
        with OfflineFlightClient(cli.location, timeout=60) as client:
            engines = client.stats()["requests_by_engine"]
        assert cli.stop(signal.SIGTERM) == 0
    # On the duckdb store, where the engine would answer by default.
    assert engines == {"feast": 2}
    served = [line for line in cli.log_lines() if REQUEST_LINE.search(line)]
    assert len(served) == 2 and all("engine=feast" in line for line in served)


def test_the_engine_runs_with_the_threads_memory_limit_and_spill_folder_given(
    server_repo, local_store, tmp_path
):
    spill = tmp_path / "spill"
    command = [sys.executable, "-m", "flightlab", "-c", str(server_repo), "serve_offline"]
    options = ["--engine", "flightlab", "--engine-threads", "1"]
    options += ["--engine-memory-limit", "16MB", "--spill-dir", str(spill)]
    entities = entity_frame(SPILLING_ROWS, seed=75)
    with serve_offline([*command, "--port", "0", *options], tmp_path) as cli:
        with watching_spill(spill) as spilled, OfflineFlightClient(cli.location) as client:
            request = protocol.GetHistoricalFeatures(
                features=tuple(FEATURES), entity_df=pa.Table.from_pandas(entities)
            )
            got = client.fetch(request, timeout=300).to_pandas()
            engines = client.stats()["requests_by_engine"]
        assert cli.stop(signal.SIGTERM) == 0
    assert engines == {"flightlab": 1}
    # The join outgrew 16 MB: it spilled, into a folder of its own under --spill-dir.
    assert len(spilled) == 1
    assert_same_rows(
        local_store.get_historical_features(entities, FEATURES).to_df(), got, ENTITY_KEYS
    )
