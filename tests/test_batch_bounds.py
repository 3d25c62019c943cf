"""Bounded batches (``flightlab.wire.streaming``) as functions.

``bounded_batches`` keeps both bounds (rows and bytes) and the rows in order,
isolates a row over the byte bound, and never yields an empty batch;
``result_batches`` carries the totals on the first batch only and stops when
the client goes. Bounded batches from a real server, both ways:
``test_streaming_limits.py``.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from offline_helpers import _ints

from flightlab.wire import streaming


def test_bounded_batches_keep_both_bounds_and_the_rows_in_order():
    table = pa.table(
        {"x": pa.array(range(1000), pa.int64()), "y": [f"r{i:04d}" for i in range(1000)]}
    )
    for max_rows, max_bytes in ((100, 1 << 20), (1 << 20, 2000), (30, 2000)):
        batches = list(streaming.bounded_batches(table, max_rows, max_bytes))
        assert all(0 < b.num_rows <= max_rows and b.nbytes <= max_bytes for b in batches)
        assert pa.Table.from_batches(batches).equals(table)
    assert len(list(streaming.bounded_batches(table, 100, 1 << 20))) == 10


def test_bounded_batches_split_uneven_rows_and_isolate_oversized_ones():
    sizes = [1] * 50 + [300] * 50 + [5000] + [1] * 10
    table = pa.table({"s": ["x" * n for n in sizes]})
    batches = list(streaming.bounded_batches(table, 1000, 1000))
    assert pa.Table.from_batches(batches).equals(table)
    for batch in batches:
        assert batch.nbytes <= 1000 or batch.num_rows == 1
    assert any(b.num_rows == 1 and b.nbytes > 5000 for b in batches)


def test_bounded_batches_never_yield_an_empty_batch():
    empty = pa.table({"x": pa.array([], pa.int64())})
    table = pa.concat_tables([empty, _ints(3), empty, _ints(1), empty])
    batches = list(streaming.bounded_batches(table, 2, 1000))
    assert [b.num_rows for b in batches] == [2, 1, 1]
    assert list(streaming.bounded_batches(empty, 2, 1000)) == []


def test_result_batches_carry_totals_on_the_first_batch_only():
    table = _ints(10)
    pairs = list(streaming.result_batches(table, 3, 1000, lambda: False))
    assert [b.num_rows for b, _ in pairs] == [3, 3, 3, 1]
    assert streaming.parse_totals(pairs[0][1]) == (10, table.nbytes)
    assert all(metadata is None for _, metadata in pairs[1:])

    empty = pa.table({"x": pa.array([], pa.int64())})
    [(batch, metadata)] = streaming.result_batches(empty, 3, 1000, lambda: False)
    assert batch.num_rows == 0 and batch.schema == empty.schema
    assert streaming.parse_totals(metadata) == (0, 0)


def test_result_batches_stop_when_the_client_goes():
    sent: list[int] = []
    with pytest.raises(flight.FlightCancelledError):
        for batch, _ in streaming.result_batches(_ints(10), 3, 1000, lambda: len(sent) >= 2):
            sent.append(batch.num_rows)
    assert sent == [3, 3]
