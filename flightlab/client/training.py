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

    # A distributed job: the coordinator asks once, each worker reads its shard.
    shards = training.shards(job, count=4, by=["image_id"], seed=7)
    for arrays in shards[0].arrays(["pixels", "label"]):  # on worker 0 (shards pickle)
        ...

    # Or each worker asks for its own shard of the same job.
    for arrays in training.shard_arrays(job, index=0, count=4, by=["image_id"],
                                        columns=["pixels", "label"]):
        ...

Each part of a split, and each :func:`shard`, is its own request: the entity
rows are uploaded once per part. :func:`shards` uploads them once for all the
shards, which the server serves as that many endpoints of one result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from flightlab.client.shards import Shard, batch_arrays
from flightlab.client.store import RemoteRetrievalJob
from flightlab.errors import ProtocolError
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


def shards(
    job: RemoteRetrievalJob,
    count: int,
    by: Sequence[str] | None = None,
    seed: int | None = None,
    shuffle_seed: int | None = None,
) -> list[Shard]:
    """The result in ``count`` disjoint, stable shards by a hash of ``by``
    under ``seed`` (each shuffled by ``shuffle_seed`` if given): one
    :class:`~flightlab.client.shards.Shard` per worker, from one upload of
    the entity rows. Each is answered on the server when it is read, once.

    A part of a :func:`split` is sharded within its own hash range, by the
    split's keys and seed (``by`` and ``seed`` may be left out); a part of
    a :func:`split_by_time` is sharded by ``by`` (``seed`` 0 if not given)."""
    selection = _sharded(job.request.row_selection() or RowSelection(), count, by, seed)
    if shuffle_seed is not None:
        selection = dataclasses.replace(selection, shuffle_seed=shuffle_seed)
    served = job.with_selection(selection).served_shards()
    if len(served) != count:
        raise ProtocolError(f"asked for {count} shards, the server served {len(served)}")
    return served


def _sharded(
    part: RowSelection, count: int, by: Sequence[str] | None, seed: int | None
) -> RowSelection:
    if part.keys:  # a part of a split: its range, by its keys and seed
        if (by is not None and tuple(by) != part.keys) or seed not in (None, part.seed):
            raise ValueError(
                f"a part of a split is sharded by the split's keys {list(part.keys)} "
                f"and seed {part.seed}"
            )
        return dataclasses.replace(part, shards=count)
    if not by:
        raise ValueError("shards need the key columns to hash: by=[...]")
    return dataclasses.replace(part, keys=tuple(by), seed=seed or 0, shards=count)


def shard(
    job: RemoteRetrievalJob, index: int, count: int, by: Sequence[str], seed: int = 0
) -> RemoteRetrievalJob:
    """Worker ``index`` of ``count``'s disjoint, stable part of the entity rows,
    as a job of its own: the same rows as ``shards(job, count, by, seed)[index]``."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in 0..{count - 1}")
    return job.with_selection(RowSelection(keys=tuple(by), seed=seed, shards=count).shard(index))


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
        yield batch_arrays(batch, columns)
