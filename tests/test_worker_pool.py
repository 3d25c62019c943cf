"""The worker pool (``flightlab.server.workers.WorkerPool``) as an object.

It runs at most its number of jobs at once, returns their results and raises
their errors (a job's own ``TimeoutError`` included); a request that waits
longer than the queue timeout gets ``ServerBusyError``. A request whose
client has left is dropped from the queue, not started when a worker frees
up, and discarded while it runs; a result set up for a client already gone
is still closed. The queue on a real server, end to end:
``test_streaming_limits.py``.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pytest
from offline_helpers import capture, wait_until

from flightlab.errors import ClientGoneError, ServerBusyError
from flightlab.server.streams import closing
from flightlab.server.workers import WorkerPool


def _occupy(pool: WorkerPool, release: threading.Event) -> tuple[threading.Thread, list]:
    """Hold one of ``pool``'s workers until ``release`` is set."""
    results: list = []
    thread = threading.Thread(
        target=lambda: results.append(pool.run(lambda: release.wait(30) and "released"))
    )
    thread.start()
    assert wait_until(lambda: pool.load()["running"] >= 1)
    return thread, results


def test_pool_returns_results_and_raises_errors():
    pool = WorkerPool(2, queue_timeout=5)

    def bad_input() -> None:
        raise ValueError("bad input")

    try:
        assert pool.run(lambda: 42) == 42
        with pytest.raises(ValueError, match="bad input"):
            pool.run(bad_input)
        assert pool.load() == {"workers": 2, "running": 0, "queued": 0}
    finally:
        pool.shutdown()


def test_pool_runs_at_most_workers_jobs_at_once():
    pool = WorkerPool(2, queue_timeout=30)
    lock = threading.Lock()
    now = peak = 0

    def job() -> int:
        nonlocal now, peak
        with lock:
            now += 1
            peak = max(peak, now)
        time.sleep(0.1)
        with lock:
            now -= 1
        return 1

    try:
        with ThreadPoolExecutor(5) as callers:
            assert sum(callers.map(lambda _: pool.run(job), range(5))) == 5
        assert peak <= 2
    finally:
        pool.shutdown()


def test_pool_queue_overflow_raises_server_busy():
    pool = WorkerPool(1, queue_timeout=0.2)
    release = threading.Event()
    thread, results = _occupy(pool, release)
    ran: list[str] = []
    try:
        with pytest.raises(ServerBusyError, match="busy"):
            pool.run(lambda: ran.append("ran"))
        assert pool.load() == {"workers": 1, "running": 1, "queued": 0}
    finally:
        release.set()
        thread.join(10)
        pool.shutdown()
    assert results == ["released"]
    assert ran == []


def test_pool_drops_a_queued_request_whose_client_left():
    pool = WorkerPool(1, queue_timeout=30)
    release = threading.Event()
    thread, _ = _occupy(pool, release)
    ran: list[str] = []
    try:
        with pytest.raises(ClientGoneError, match="queued"):
            pool.run(lambda: ran.append("ran"), is_cancelled=lambda: True)
        assert pool.load()["queued"] == 0
    finally:
        release.set()
        thread.join(10)
        pool.shutdown()
    assert ran == []


def test_pool_does_not_start_a_join_whose_client_left_as_a_worker_freed_up():
    """The smoke3 oddity: the only worker frees up just after the client's
    deadline, before the waiting RPC thread polls again. The join must not
    start for a client that has gone."""
    pool = WorkerPool(1, queue_timeout=30)
    release, gone = threading.Event(), threading.Event()

    def blocker() -> None:
        release.wait(30)
        gone.set()  # the client leaves just as the worker frees up

    occupier = threading.Thread(target=pool.run, args=(blocker,))
    occupier.start()
    assert wait_until(lambda: pool.load()["running"] == 1)
    ran: list[str] = []
    outcome: list[Any] = []
    waiter = threading.Thread(
        target=lambda: outcome.append(
            capture(lambda: pool.run(lambda: ran.append("ran"), gone.is_set))
        )
    )
    waiter.start()
    try:
        assert wait_until(lambda: pool.load()["queued"] == 1)
        release.set()
        waiter.join(10)
        occupier.join(10)
    finally:
        release.set()
        pool.shutdown()
    assert ran == []
    assert isinstance(outcome[0], ClientGoneError) and "queued" in str(outcome[0])
    assert pool.load() == {"workers": 1, "running": 0, "queued": 0}


def test_pool_discards_a_running_join_whose_client_left():
    pool = WorkerPool(1, queue_timeout=30)
    started, release = threading.Event(), threading.Event()

    def join() -> str:
        started.set()
        release.wait(30)
        return "done"

    try:
        with pytest.raises(ClientGoneError, match="discarded"):
            pool.run(join, is_cancelled=started.is_set)
        assert pool.load()["running"] == 1  # the join itself runs on
        release.set()
        assert wait_until(lambda: pool.load()["running"] == 0)
        assert pool.run(lambda: "next") == "next"
    finally:
        release.set()
        pool.shutdown()


def test_pool_passes_on_a_timeout_error_raised_by_the_job():
    """A TimeoutError from the job itself (a database timeout) is its error,
    not the end of a poll: it must reach the caller at once."""
    pool = WorkerPool(1, queue_timeout=5)
    start = time.monotonic()

    def database_call() -> None:
        raise TimeoutError("the database query timed out")

    try:
        # The client "leaves" after 3 s, so a pool that swallowed the
        # TimeoutError fails this test with ClientGoneError instead of hanging.
        with pytest.raises(TimeoutError, match="database"):
            pool.run(database_call, is_cancelled=lambda: time.monotonic() - start > 3)
    finally:
        pool.shutdown()


def test_a_result_set_up_for_a_client_already_gone_is_closed():
    # The client cancels while its query is still being set up: the worker
    # cannot hand the result over, and must still close it (a DuckDB database
    # and read locks on the engine path), not leave it to the garbage collector.
    closed, setting_up = threading.Event(), threading.Event()

    def open_stream():
        setting_up.set()
        time.sleep(0.3)
        batches = iter([pa.record_batch({"x": [1]})])
        return pa.schema([("x", pa.int64())]), closing(batches, closed.set)

    pool = WorkerPool(workers=1, queue_timeout=5)
    try:
        with pytest.raises(ClientGoneError):
            pool.stream(open_stream, is_cancelled=setting_up.is_set)
        assert wait_until(closed.is_set, timeout=10)
    finally:
        pool.shutdown()
