"""Drill 5: inputs past every cap and another client's command id, each
refused with a named error while the server keeps serving."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from flightlab.client.transport import OfflineFlightClient
from flightlab.errors import ResourceExhaustedError, UnknownFeatureError
from flightlab.testing.faults.servers import good_request_answers
from flightlab.testing.processes import ServerProcess
from flightlab.testing.sample_repo import CUSTOMER_IDS, DAYS, DRIVER_IDS, START, entity_frame
from flightlab.wire import protocol
from flightlab.wire.actions import ACTION_DROP
from flightlab.wire.headers import OWNER_HEADER

# --- 5. hostile inputs -----------------------------------------------------------------------


def hostile_inputs(
    server: ServerProcess,
    entity_rows: int = 5_000_000,
    string_bytes: int = 100 * 1024**2,
    refs: int = 10_000,
) -> dict[str, Any]:
    """Inputs past every cap (the server runs with drill_options), and another
    client's command id: each refused with a named error (a cap's refusal
    naming the cap's option), the server serving afterwards, its RSS back near
    where it was."""
    outcomes: dict[str, str] = {}
    with OfflineFlightClient(server.location, timeout=300) as client:
        for _ in range(5):
            good_request_answers(server.location)
        time.sleep(1.0)
        rss_before = server.rss_mb()
        cases = {
            "entity_frame_over_the_cap": (
                lambda: client.fetch(_big_entity_request(entity_rows)),
                ResourceExhaustedError,
                "--max-entity-rows",
            ),
            "feature_references": (
                lambda: client.fetch(
                    protocol.GetHistoricalFeatures(
                        features=tuple(f"driver_stats:f{i}" for i in range(refs)),
                        entity_df=pa.Table.from_pandas(entity_frame(10)),
                    )
                ),
                UnknownFeatureError,
                None,
            ),
            "huge_string": (
                lambda: client.fetch(
                    protocol.GetHistoricalFeatures(
                        features=("driver_stats:conv_rate",), entity_df_sql="x" * string_bytes
                    )
                ),
                ResourceExhaustedError,
                "--max-param-bytes",
            ),
            "huge_feature_reference": (
                lambda: client.fetch(
                    protocol.GetHistoricalFeatures(
                        features=("driver_stats:" + "v" * string_bytes,),
                        entity_df=pa.Table.from_pandas(entity_frame(10)),
                    )
                ),
                ResourceExhaustedError,
                "--max-param-bytes",
            ),
        }
        for name, (run, expected, option) in cases.items():
            outcomes[name] = _outcome(run, expected, option)
            outcomes[name] += "" if good_request_answers(server.location) else " NOT SERVING"
        outcomes["another_clients_command"] = _stranger_case(server.location)
    time.sleep(2.0)  # the server releases memory shortly after a large request
    rss_after = server.rss_mb()
    serving = good_request_answers(server.location)
    return {
        "outcomes": outcomes,
        "server_answers": serving,
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "rss_change": (rss_after - rss_before) / rss_before,
    }


def _big_entity_request(rows: int) -> protocol.GetHistoricalFeatures:
    rng = np.random.default_rng(4)
    seconds = rng.integers(0, DAYS * 86400, rows)
    start = np.datetime64(START.replace(tzinfo=None), "s")
    timestamps = pa.array(start + seconds.astype("timedelta64[s]")).cast(pa.timestamp("us", "UTC"))
    table = pa.table(
        {
            "driver_id": pa.array(rng.choice(DRIVER_IDS, rows).astype("int64")),
            "customer_id": pa.array(rng.choice(CUSTOMER_IDS, rows).astype("int64")),
            "event_timestamp": timestamps,
        }
    )
    return protocol.GetHistoricalFeatures(features=("driver_stats:conv_rate",), entity_df=table)


def _outcome(run: Callable[[], Any], expected: type, names: str | None = None) -> str:
    """A verdict starting "refused" when ``run`` raises ``expected`` with a
    message naming ``names`` (a cap's option); else what went wrong."""
    try:
        run()
    except expected as exc:
        text = str(exc)
        if names is not None and names not in text:
            return f"WRONG MESSAGE, not naming {names}: {type(exc).__name__}: {text[:200]}"
        return f"refused: {type(exc).__name__}: {text[:200]}"
    except Exception as exc:
        return f"WRONG ERROR {type(exc).__name__}: {str(exc)[:200]}"
    return "WRONG: accepted"


def _stranger_case(location: str) -> str:
    """A stranger (a bare Flight client, no owner header) tries another's command."""
    entities = entity_frame(20, seed=12)
    request = protocol.GetHistoricalFeatures(
        features=("driver_stats:conv_rate",), entity_df=pa.Table.from_pandas(entities)
    )
    secret = flight.FlightCallOptions(headers=[(OWNER_HEADER.encode(), b"the-owner")])
    with OfflineFlightClient(location, timeout=60, owner="the-owner") as owner:
        command_id = owner.stage(request)
    descriptor, ticket = protocol.command_descriptor(command_id), protocol.ticket_bytes(command_id)
    stranger, owner_raw = flight.FlightClient(location), flight.FlightClient(location)
    try:
        seen = command_id in [i.descriptor.command.decode() for i in stranger.list_flights()]
        refused = [
            _outcome(lambda: stranger.get_flight_info(descriptor), flight.FlightServerError),
            _outcome(
                lambda: stranger.do_get(flight.Ticket(ticket)).read_all(), flight.FlightServerError
            ),
        ]
        [answer] = stranger.do_action(flight.Action(ACTION_DROP, ticket))
        dropped = answer.body.to_pybytes().decode()
        # The owner's command is untouched: listed to it, and it runs on its rows.
        listed = [i.descriptor.command.decode() for i in owner_raw.list_flights(b"", secret)]
        info = owner_raw.get_flight_info(descriptor, secret)
        rows = owner_raw.do_get(info.endpoints[0].ticket, secret).read_all().num_rows
    finally:
        stranger.close()
        owner_raw.close()
    unknown = all("UnknownCommandError" in r for r in refused)
    ok = unknown and not seen and command_id in listed and rows == len(entities)
    verdict = "refused: UnknownCommandError" if ok else f"WRONG {refused}"
    return f"{verdict} (listed to the stranger: {seen}, its drop: {dropped}, owner got {rows} rows)"
