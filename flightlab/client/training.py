"""Training sets cut on the server: splits, samples, shuffles and shards.

Each function takes a retrieval job of flightlab's client and returns jobs
(or batches) for parts of its entity rows, chosen on the server by a
:class:`~flightlab.wire.selection.RowSelection`: by a seeded hash of key
columns, or by the entity timestamp. The same arguments pick the same rows
on any server, in any run; the parts are disjoint and together hold every
entity row once. Feast's signatures are fixed, so these live beside them::

    from flightlab.client import training

    job = store.get_historical_features(entity_df, features)
    parts = training.split(job, {"train": 0.8, "validation": 0.1, "test": 0.1},
                           by=["image_id"], seed=7)
    train = parts["train"].to_df()
    for arrays in training.shard_arrays(job, index=0, count=4, by=["image_id"],
                                        columns=["pixels", "label"]):
        ...  # worker 0 of 4: its shard, batch by batch

Each part is its own request: the entity rows are uploaded once per part.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flightlab.client.store import RemoteRetrievalJob
from flightlab.wire.selection import RowSelection, fraction_ranges


def split(
    job: RemoteRetrievalJob,
    fractions: Mapping[str, float],
    by: Sequence[str],
    seed: int = 0,
    shuffle_seed: int | None = None,
    sample: float | None = None,
) -> dict[str, RemoteRetrievalJob]:
    """One job per named fraction (summing to 1) of the entity rows, assigned
    by a hash of the ``by`` columns under ``seed``; each shuffled by
    ``shuffle_seed`` and thinned to ``sample`` of its rows if given."""
    return {
        name: job.with_selection(
            RowSelection(
                keys=tuple(by),
                seed=seed,
                lower=lower,
                upper=upper,
                sample=sample,
                shuffle_seed=shuffle_seed,
            )
        )
        for name, (lower, upper) in fraction_ranges(dict(fractions)).items()
    }


def split_by_time(
    job: RemoteRetrievalJob,
    cutoffs: Mapping[str, datetime | None],
    shuffle_seed: int | None = None,
) -> dict[str, RemoteRetrievalJob]:
    """One job per named period of the entity timestamps: each name's value is
    where its period ends (exclusive), in order; the last one's is None."""
    names = list(cutoffs)
    ends = list(cutoffs.values())
    if not names or ends[-1] is not None or any(end is None for end in ends[:-1]):
        raise ValueError("every cut-off but the last must be a time; the last must be None")
    if any(a >= b for a, b in zip(ends[:-2], ends[1:-1], strict=False)):
        raise ValueError(f"the cut-offs must increase: {ends[:-1]}")
    starts = [None, *ends[:-1]]
    return {
        name: job.with_selection(
            RowSelection(time_from=start, time_to=end, shuffle_seed=shuffle_seed)
        )
        for name, start, end in zip(names, starts, ends, strict=True)
    }


def shard(
    job: RemoteRetrievalJob, index: int, count: int, by: Sequence[str], seed: int = 0
) -> RemoteRetrievalJob:
    """Worker ``index`` of ``count``'s disjoint, stable part of the entity rows."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in 0..{count - 1}")
    lower, upper = index / count, (index + 1) / count if index + 1 < count else 1.0
    return job.with_selection(RowSelection(keys=tuple(by), seed=seed, lower=lower, upper=upper))


def shard_arrays(
    job: RemoteRetrievalJob,
    index: int,
    count: int,
    by: Sequence[str],
    columns: Sequence[str],
    seed: int = 0,
) -> Iterator[dict[str, Any]]:
    """Shard ``index`` of ``count``, batch by batch, as numpy arrays of
    ``columns`` (a list column becomes a 2-D array when its lists are even)."""
    for batch in shard(job, index, count, by, seed).to_arrow_batches():
        yield {name: _as_numpy(batch.column(name)) for name in columns}


def _as_numpy(column: pa.Array) -> np.ndarray:
    """A column as numpy: a list column of lists all of one length (no nulls)
    as a 2-D array, anything else as ``to_numpy`` gives it."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lengths = pc.list_value_length(column)
        width = pc.min_max(lengths)
        if column.null_count == 0 and width["min"] == width["max"] and len(column):
            values = column.flatten().to_numpy(zero_copy_only=False)
            return values.reshape(len(column), width["min"].as_py())
    return column.to_numpy(zero_copy_only=False)
