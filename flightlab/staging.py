"""Commands whose parameters have arrived but which have not run yet."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pyarrow as pa

from flightlab.errors import MalformedParameterError, UnknownCommandError


@dataclass
class StagedCommand:
    command_id: str
    api: str
    params: dict[str, pa.Table] = field(default_factory=dict)
    staged_at: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.params.values())


@dataclass(frozen=True)
class StagedSummary:
    """What may be shown of a staged command (for list_flights and panels)."""

    command_id: str
    api: str
    params: tuple[str, ...]
    nbytes: int
    age_seconds: float


class CommandStaging:
    """Staged commands by id. Every method is safe to call from many threads;
    a command is handed out by :meth:`take` at most once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._commands: dict[str, StagedCommand] = {}

    def stage(self, command_id: str, api: str, param: str, table: pa.Table) -> None:
        with self._lock:
            command = self._commands.get(command_id)
            if command is None:
                command = self._commands[command_id] = StagedCommand(command_id, api)
            elif command.api != api:
                raise MalformedParameterError(
                    f"command {command_id} was staged for {command.api!r}, not for {api!r}"
                )
            if param in command.params:
                raise MalformedParameterError(
                    f"command {command_id} already has the parameter {param!r}"
                )
            command.params[param] = table

    def peek(self, command_id: str) -> StagedCommand:
        with self._lock:
            return self._get(command_id)

    def take(self, command_id: str) -> StagedCommand:
        """Remove and return a command: the one call that may run it."""
        with self._lock:
            command = self._get(command_id)
            del self._commands[command_id]
            return command

    def drop(self, command_id: str) -> bool:
        with self._lock:
            return self._commands.pop(command_id, None) is not None

    def summaries(self) -> list[StagedSummary]:
        now = time.monotonic()
        with self._lock:
            return [
                StagedSummary(c.command_id, c.api, tuple(c.params), c.nbytes, now - c.staged_at)
                for c in self._commands.values()
            ]

    def __len__(self) -> int:
        with self._lock:
            return len(self._commands)

    def _get(self, command_id: str) -> StagedCommand:
        try:
            return self._commands[command_id]
        except KeyError:
            raise UnknownCommandError(
                f"no staged command {command_id!r}: it was never staged, "
                "has already run, or was dropped"
            ) from None
