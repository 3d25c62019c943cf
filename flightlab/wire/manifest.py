"""Every do_put names all the parameters of its command, so a server can tell
a whole command from one whose puts went to several replicas.

A load balancer that spreads requests (not connections) over replicas may
send the ``features`` put of a command to one replica and its ``entity_df``
put to another. Run with what it holds, a replica could answer a different
question (an optional ``full_feature_names`` missing is still a valid
request). So flightlab's client adds the key ``params`` to each put's schema
metadata: the comma-separated names of all the parameters it sends for the
command. Before running a command the server checks that it holds them all
(:func:`check_complete`), and otherwise fails clearly. A put without the key
(an older client, one written from the seed document) is not checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pyarrow as pa

from flightlab.wire.flight_errors import MalformedParameterError, UnknownCommandError

META_PARAMS = b"params"


def params_metadata(names: Iterable[str]) -> dict[bytes, bytes]:
    return {META_PARAMS: ",".join(sorted(names)).encode()}


def declared_params(table: pa.Table) -> frozenset[str] | None:
    raw = (table.schema.metadata or {}).get(META_PARAMS)
    if raw is None:
        return None
    return frozenset(name for name in raw.decode("utf-8", "replace").split(",") if name)


def check_complete(command_id: str, params: Mapping[str, pa.Table]) -> dict[str, pa.Table]:
    """``params`` without the ``params`` key, once sure the command is whole."""
    declared = {declared_params(table) for table in params.values()} - {None}
    if len(declared) > 1:
        raise MalformedParameterError(
            f"the puts of command {command_id} disagree on its parameters: "
            + " vs ".join(sorted(",".join(sorted(d)) for d in declared))
        )
    if declared:
        [expected] = declared
        missing = sorted(expected - set(params))
        if missing:
            raise UnknownCommandError(
                f"command {command_id} is incomplete on this server: it holds "
                f"{sorted(params)} but its client sent {sorted(expected)} "
                f"(missing {missing}). Its puts reached different servers: send all "
                "of a command's calls to one replica (connection-level load "
                "balancing, or the replica's own address)"
            )
    return {name: _without_key(table) for name, table in params.items()}


def _without_key(table: pa.Table) -> pa.Table:
    metadata = table.schema.metadata
    if not metadata or META_PARAMS not in metadata:
        return table
    rest = {k: v for k, v in metadata.items() if k != META_PARAMS}
    return table.replace_schema_metadata(rest or None)
