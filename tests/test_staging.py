"""Staged commands (``flightlab.server.staging.CommandStaging``) as an object.

The cap on staged bytes counts every command and frees on drop; a command is
handed out once; old commands expire (when swept) and are then named as
expired, not as never staged. The staging cap and expiry on a real server,
end to end: ``test_streaming_limits.py``.
"""

from __future__ import annotations

import time

import pytest
from offline_helpers import _ints

from flightlab.errors import ResourceExhaustedError, UnknownCommandError
from flightlab.server.staging import CommandStaging


def test_staging_cap_counts_every_command_and_frees_on_drop():
    staging = CommandStaging(ttl_seconds=600, max_bytes=1000)
    staging.stage("a", "api", "p", _ints(100))  # 800 bytes
    with pytest.raises(ResourceExhaustedError, match="cap of 1000"):
        staging.stage("b", "api", "p", _ints(50))  # 400 more
    assert len(staging) == 1 and staging.staged_bytes == 800
    staging.stage("b", "api", "p", _ints(25))  # exactly at the cap
    assert staging.staged_bytes == 1000
    assert staging.drop("a") and not staging.drop("a")
    staging.stage("c", "api", "p", _ints(50))
    assert staging.staged_bytes == 600
    assert staging.take("b").nbytes == 200
    assert staging.staged_bytes == 400


def test_staging_hands_a_command_out_once():
    staging = CommandStaging()
    staging.stage("a", "api", "p", _ints(3))
    assert staging.take("a").params["p"].num_rows == 3
    with pytest.raises(UnknownCommandError, match="already run"):
        staging.take("a")
    assert staging.staged_bytes == 0


def test_staging_expires_old_commands_with_an_expired_message():
    staging = CommandStaging(ttl_seconds=0.1, max_bytes=1000)
    staging.stage("old", "api", "p", _ints(10))
    staging.stage("older", "api", "p", _ints(10))
    time.sleep(0.25)
    assert staging.staged_bytes == 160  # nothing expires by itself
    assert staging.expire() == 2
    assert staging.staged_bytes == 0 and len(staging) == 0
    for method in (staging.peek, staging.take):
        with pytest.raises(UnknownCommandError, match="expired"):
            method("old")
    with pytest.raises(UnknownCommandError, match="never staged") as never:
        staging.peek("never")
    assert "expired" not in str(never.value)
