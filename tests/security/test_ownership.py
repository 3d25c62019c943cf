"""A staged command belongs to the user who staged it, on a server with OIDC auth.

Another user, even one who may read and write everything, can neither list,
read, run, drop nor extend it: for them it looks exactly like a command never
staged; its owner still can. The stats action shows no other user's errors.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow.flight as flight
import pytest
from feast.errors import FeastPermissionError
from security_helpers import (
    _raw_put,
    assert_clean_and_serving,
    client,
    listed,
    no_traceback,
    options,
    raw_client,
    side_effects,
)

from flightlab.client.transport import translated_errors
from flightlab.errors import UnknownCommandError
from flightlab.wire import protocol
from flightlab.wire.actions import ACTION_DROP


def action_result(raw: flight.FlightClient, action: str, command_id: str) -> Any:
    results = list(
        raw.do_action(flight.Action(action, protocol.ticket_bytes(command_id)), options())
    )
    return json.loads(results[0].body.to_pybytes())


def test_staged_commands_are_invisible_to_another_user(server, tokens, api_requests, repo):
    """rita stages a read and walt a write. ada, who may read and write
    everything, can neither list, read, run, drop nor extend either command;
    each owner still can afterwards."""
    read = api_requests["get_historical_features"]()
    write = api_requests["offline_write_batch"]()
    with client(server, tokens["rita"]) as c:
        read_id = c.stage(read)
    with client(server, tokens["walt"]) as c:
        write_id = c.stage(write)
    assert server.stats_json()["staged_commands"] == 2
    rita, walt = raw_client(server, tokens["rita"]), raw_client(server, tokens["walt"])
    ada = raw_client(server, tokens["ada"])

    assert listed(ada) == []
    for command_id in (read_id, write_id):
        # Someone else's command looks exactly like one never staged.
        never_staged = protocol.new_command_id()
        for read_call in (
            lambda cid: ada.get_flight_info(protocol.command_descriptor(cid), options()),
            lambda cid: ada.do_get(flight.Ticket(protocol.ticket_bytes(cid)), options()).read_all(),
        ):
            messages = []
            for cid in (command_id, never_staged):
                with pytest.raises(flight.FlightServerError) as info:
                    read_call(cid)
                no_traceback(info.value)
                messages.append(str(info.value).replace(cid, "<id>"))
            assert "no staged command" in messages[0]
            assert messages[0] == messages[1]
        assert action_result(ada, ACTION_DROP, command_id) == {"dropped": False}
    # Running walt's write as ada: not found (mapped back to flightlab's class).
    with pytest.raises(UnknownCommandError) as unknown, translated_errors():
        action_result(ada, write.api, write_id)
    assert "no staged command" in str(unknown.value)
    # Adding a parameter to another user's command is refused, and does not drop it.
    with pytest.raises(flight.FlightServerError) as taken:
        _raw_put(ada, read_id)
    assert "taken" in str(taken.value)
    assert server.stats_json()["staged_commands"] == 2

    # Each owner sees only their own command...
    assert listed(rita) == [read_id]
    assert listed(walt) == [write_id]
    # ...and still reads, runs and drops it.
    info = rita.get_flight_info(protocol.command_descriptor(read_id), options())
    assert rita.do_get(info.endpoints[0].ticket, options()).read_all().num_rows == 8
    rows_before = side_effects(repo)["driver_stats"][0]
    assert action_result(walt, write.api, write_id) == {"rows_written": 2}
    assert side_effects(repo)["driver_stats"][0] == rows_before + 2
    with client(server, tokens["rita"]) as c:
        dropped_id = c.stage(read)
    assert listed(rita) == [dropped_id]
    assert action_result(rita, ACTION_DROP, dropped_id) == {"dropped": True}
    assert listed(rita) == []
    assert_clean_and_serving(server, tokens)


def test_the_stats_action_does_not_show_another_users_errors(server, tokens, api_requests):
    with client(server, tokens["walt"]) as walt, pytest.raises(FeastPermissionError) as denied:
        walt.fetch(api_requests["get_historical_features"]())
    with client(server, tokens["nobody"]) as nobody:
        stats = nobody.stats()
    assert stats["staged_commands"] == 0
    assert "Requires roles" not in json.dumps(stats), str(denied.value)
