"""Fault drills against real `flightlab serve_offline` processes, at any size.

Each drill returns a result dict of what it measured; ``tests/test_faults.py``
runs them small and asserts, ``scripts/faults.py`` runs them at full size and
prints a report. Servers and dying clients are subprocesses, so they can be
SIGKILLed (a client once it says it reached its stage) and a server's RSS read
from /proc.

By concern: :mod:`~flightlab.testing.faults.rows` (marked rows and their
accounting), :mod:`~flightlab.testing.faults.servers` (the servers the drills
run against and the calls they make), :mod:`~flightlab.testing.faults.writes`
(SIGKILL during writes, several servers on one source),
:mod:`~flightlab.testing.faults.clients` (dying clients, the soak) and
:mod:`~flightlab.testing.faults.hostile` (hostile inputs),
:mod:`~flightlab.testing.faults.engine` (the engine's: a client gone
mid-stream, requests at once, a spill over its cap) on the generated repo of
:mod:`~flightlab.testing.faults.large`. The classic drills and what their
callers use are exported here; the engine's from their module.
"""

from __future__ import annotations

from flightlab.testing.faults.clients import dying_clients, soak
from flightlab.testing.faults.hostile import hostile_inputs
from flightlab.testing.faults.rows import TEST_MARKERS, marked_rows, markers_in
from flightlab.testing.faults.servers import drill_options, server_process, server_processes
from flightlab.testing.faults.writes import concurrent_servers, sigkill_during_writes

__all__ = [
    "TEST_MARKERS",
    "concurrent_servers",
    "drill_options",
    "dying_clients",
    "hostile_inputs",
    "marked_rows",
    "markers_in",
    "server_process",
    "server_processes",
    "sigkill_during_writes",
    "soak",
]
