"""Commands whose parameters have arrived but which have not run yet."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import pyarrow as pa

from flightlab.errors import (
    MalformedParameterError,
    ResourceExhaustedError,
    UnknownCommandError,
    quoted,
)
from flightlab.server.limits import DEFAULT_MAX_STAGED_BYTES, DEFAULT_STAGED_TTL

# How many expired command ids are remembered, to say "expired" rather than
# "unknown" when a late client asks for one.
_EXPIRED_MEMORY = 1024


@dataclass
class StagedCommand:
    command_id: str
    api: str
    owner: str | None = None  # who staged it; None when the server has no auth
    params: dict[str, pa.Table] = field(default_factory=dict)
    staged_at: float = field(default_factory=time.monotonic)
    # Served in this many partitions (see flightlab.server.partitions); the
    # ones already handed out. The command stays staged until all are.
    partitions: int = 1
    taken: set[int] = field(default_factory=set)

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
    a command is handed out by :meth:`take` at most once.

    A command belongs to the caller who staged it: for anyone else it does not
    exist (they can neither see, run nor drop it).

    A command not run within ``ttl_seconds`` of its first parameter expires;
    the bytes staged by all clients together never exceed ``max_bytes``.
    """

    def __init__(
        self, ttl_seconds: float = DEFAULT_STAGED_TTL, max_bytes: int = DEFAULT_MAX_STAGED_BYTES
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._commands: dict[str, StagedCommand] = {}
        self._expired: OrderedDict[str, None] = OrderedDict()
        self._bytes = 0

    def stage(
        self, command_id: str, api: str, param: str, table: pa.Table, owner: str | None = None
    ) -> None:
        with self._lock:
            self._expire_locked()
            command = self._commands.get(command_id)
            if command is not None and command.owner != owner:
                raise MalformedParameterError(
                    f"command id {command_id} is taken: make a new UUID for each command"
                )
            if command is not None and command.api != api:
                raise MalformedParameterError(
                    f"command {command_id} was staged for {command.api!r}, not for {quoted(api)}"
                )
            if command is not None and param in command.params:
                raise MalformedParameterError(
                    f"command {command_id} already has the parameter {quoted(param)}"
                )
            self._check_room_locked(table.nbytes)
            if command is None:
                command = self._commands[command_id] = StagedCommand(command_id, api, owner)
            command.params[param] = table
            self._bytes += table.nbytes

    def check_room(self, nbytes: int) -> None:
        """Refuse an upload of ``nbytes`` (so far) that could not be staged now:
        checked as it arrives, so an upload over the cap is never held whole."""
        with self._lock:
            self._check_room_locked(nbytes)

    def _check_room_locked(self, nbytes: int) -> None:
        if self._bytes + nbytes > self.max_bytes:
            raise ResourceExhaustedError(
                f"staging {nbytes} more bytes would exceed the server's cap of "
                f"{self.max_bytes} staged bytes ({self._bytes} in use); "
                "retry later or send less at once"
            )

    def peek(self, command_id: str, owner: str | None = None) -> StagedCommand:
        with self._lock:
            self._expire_locked()
            return self._get(command_id, owner)

    def take(self, command_id: str, owner: str | None = None) -> StagedCommand:
        """Remove and return a command: the one call that may run it."""
        return self.take_part(command_id, owner)

    def serve_in_partitions(self, command_id: str, owner: str | None, count: int) -> int:
        """Serve the command in ``count`` partitions; once one is handed out the
        count stays: what the command is now served in is returned."""
        with self._lock:
            self._expire_locked()
            command = self._get(command_id, owner)
            if not command.taken:
                command.partitions = count
            return command.partitions

    def take_part(
        self, command_id: str, owner: str | None = None, index: int = 0, count: int = 1
    ) -> StagedCommand:
        """Hand out part ``index`` of ``count`` of a command (1: the whole of
        it), each part once; the command is removed with its last part."""
        with self._lock:
            self._expire_locked()
            command = self._get(command_id, owner)
            if count != 1 or command.taken:
                _check_part(command, index, count)
                command.taken.add(index)
                if len(command.taken) < command.partitions:
                    return command
            self._remove_locked(command_id)
            return command

    def drop(self, command_id: str, owner: str | None = None) -> bool:
        with self._lock:
            command = self._commands.get(command_id)
            if command is None or command.owner != owner:
                return False
            return self._remove_locked(command_id) is not None

    def expire(self) -> int:
        """Drop commands older than the TTL; return how many."""
        with self._lock:
            return self._expire_locked()

    def summaries(self, owner: str | None = None, everyone: bool = False) -> list[StagedSummary]:
        """The staged commands of ``owner`` (of all callers with ``everyone``)."""
        now = time.monotonic()
        with self._lock:
            return [
                StagedSummary(c.command_id, c.api, tuple(c.params), c.nbytes, now - c.staged_at)
                for c in self._commands.values()
                if everyone or c.owner == owner
            ]

    @property
    def staged_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._commands)

    def _remove_locked(self, command_id: str) -> StagedCommand | None:
        command = self._commands.pop(command_id, None)
        if command is not None:
            self._bytes -= command.nbytes
        return command

    def _expire_locked(self) -> int:
        deadline = time.monotonic() - self.ttl_seconds
        stale = [cid for cid, c in self._commands.items() if c.staged_at < deadline]
        for command_id in stale:
            self._remove_locked(command_id)
            self._expired[command_id] = None
        while len(self._expired) > _EXPIRED_MEMORY:
            self._expired.popitem(last=False)
        return len(stale)

    def _get(self, command_id: str, owner: str | None) -> StagedCommand:
        command = self._commands.get(command_id)
        if command is not None and command.owner == owner:
            return command
        if command is None and command_id in self._expired:
            raise UnknownCommandError(
                f"command {quoted(command_id)} expired: it was not run within "
                f"{self.ttl_seconds:g} s of being staged"
            )
        raise UnknownCommandError(
            f"no staged command {quoted(command_id)}: it was never staged, "
            "has already run, or was dropped"
        )


def _check_part(command: StagedCommand, index: int, count: int) -> None:
    if count != command.partitions:
        raise UnknownCommandError(
            f"command {quoted(command.command_id)} is served in {command.partitions} "
            f"partition(s), not {count}"
        )
    if index in command.taken:
        raise UnknownCommandError(
            f"partition {index} of command {quoted(command.command_id)} has already been read"
        )
