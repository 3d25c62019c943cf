"""A retrieval's :class:`~flightlab.wire.selection.RowSelection` applied on the server.

The entity rows are selected before the join (a split or a shard joins only
its own rows); a shuffle reorders the answer after it. The hashes are
pandas' hashes of the key columns' values, mixed with the seed by SplitMix64:
the same on every server and every run for the same values and seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flightlab.engine.entities import prepared_entity_rows
from flightlab.engine.results import ResultStream
from flightlab.errors import MalformedEntityDataError, MalformedParameterError
from flightlab.wire import protocol
from flightlab.wire.selection import RowSelection

_SAMPLE_SALT = 0x5EED
_SHUFFLE_SALT = 0x5AFF
_BELOW_ONE = np.nextafter(1.0, 0.0)
_MASK = 2**64 - 1


def with_selection_applied(request: protocol.Request) -> protocol.Request:
    """``request`` for the entity rows its selection picks (if it has one)."""
    selection = _selection_of(request)
    if selection is None:
        return request
    if request.entity_df is None:
        raise MalformedParameterError("a row selection needs the entity rows as a table")
    rows = selected_entity_rows(request.entity_df, selection)
    return dataclasses.replace(request, entity_df=rows)


def in_selected_order(
    compute: Callable[[], ResultStream], request: protocol.Request
) -> Callable[[], ResultStream]:
    """``compute``, its answer shuffled where ``request``'s selection asks."""
    selection = _selection_of(request)
    if selection is None or selection.shuffle_seed is None:
        return compute
    columns = request.entity_df.column_names
    return lambda: shuffled(compute(), selection, columns)


def _selection_of(request: protocol.Request) -> RowSelection | None:
    if isinstance(request, protocol.GetHistoricalFeatures):
        return request.row_selection()
    return None


def selected_entity_rows(entity_rows: pa.Table, selection: RowSelection) -> pa.Table:
    """The entity rows ``selection`` picks, in their order."""
    keep = np.ones(entity_rows.num_rows, dtype=bool)
    if selection.keys:
        position = hash_fractions(entity_rows, selection.keys, selection.seed)
        keep &= (position >= selection.lower) & (position < selection.upper)
    if selection.time_from is not None or selection.time_to is not None:
        keep &= _within(entity_rows, selection)
    if selection.sample is not None:
        drawn = hash_fractions(entity_rows, selection.keys, selection.seed ^ _SAMPLE_SALT)
        keep &= drawn < selection.sample
    return entity_rows.filter(pa.array(keep))


def shuffled(
    result: ResultStream, selection: RowSelection, entity_columns: list[str]
) -> ResultStream:
    """The answer's rows in the order ``selection.shuffle_seed`` draws from each
    row's entity columns (the whole answer is held to reorder it)."""
    table = result.read_all()
    drawn = hash_fractions(table, entity_columns, selection.shuffle_seed ^ _SHUFFLE_SALT)
    order = np.argsort(drawn, kind="stable")
    return ResultStream.of_table(table.take(pa.array(order)), result.engine)


def hash_fractions(table: pa.Table, columns: tuple[str, ...] | list[str], seed: int) -> np.ndarray:
    """Each row's hash of ``columns`` under ``seed``, as a fraction in [0, 1)."""
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise MalformedEntityDataError(
            f"the row selection names column(s) {missing} the entity data does not have; "
            f"its columns are {table.column_names}"
        )
    frame = table.select(list(columns)).to_pandas()
    # pandas hashes numbers without its key (text with it): the seed is mixed in after.
    values = pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
    seeded = _mixed(values ^ _mixed(np.array([seed & _MASK], dtype=np.uint64)))
    # Below 1 always: a hash near 2**64 would round up to 1.0 and fall out of
    # the last range [lower, 1.0).
    return np.minimum(seeded / float(2**64), _BELOW_ONE)


def _mixed(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: every bit of the input moves every bit of the output."""
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _within(entity_rows: pa.Table, selection: RowSelection) -> np.ndarray:
    prepared, timestamp = prepared_entity_rows(entity_rows)
    times = prepared.column(timestamp)
    keep = pa.array(np.ones(len(times), dtype=bool))
    if selection.time_from is not None:
        keep = pc.and_(keep, pc.greater_equal(times, pa.scalar(selection.time_from, times.type)))
    if selection.time_to is not None:
        keep = pc.and_(keep, pc.less(times, pa.scalar(selection.time_to, times.type)))
    return np.asarray(pc.fill_null(keep, False))
