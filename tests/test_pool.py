"""The event build's worker pool with real processes: order, look-ahead, failures, shutdown."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from dvsgkit.store.event_pool import RemoteTraceback, WorkerError, WorkerPool

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the workers are forked (Linux)")


def no_check() -> None:
    pass


def slower_first(k: int, folder: str) -> int:
    """Job k notes that it started, then takes longer the earlier it comes."""
    Path(folder, f"started-{k}").touch()
    time.sleep(0.05 * (5 - k) if k < 5 else 0)
    return k * k


def test_results_come_in_job_order_with_at_most_ahead_in_flight(tmp_path: Path) -> None:
    pool = WorkerPool(slower_first, 3)
    try:
        got = []
        for k, result in enumerate(pool.map(((k, str(tmp_path)) for k in range(12)), 2, no_check)):
            started = len(list(tmp_path.glob("started-*")))
            assert started <= k + 2, f"{started} jobs started while result {k} was taken"
            got.append(result)
            time.sleep(0.05)  # a slow consumer: the look-ahead must not run away
    finally:
        pool.close()
    assert got == [k * k for k in range(12)]


def fails_on_odd(k: int) -> int:
    if k % 2:
        time.sleep(0.5 if k == 1 else 0)  # job 3 fails first, job 1 comes first
        raise ValueError(f"recording {k}.aedat: packet at byte {k} is bad")
    return k


def test_a_worker_exception_is_raised_in_job_order_with_its_traceback() -> None:
    pool = WorkerPool(fails_on_odd, 2)
    got = []
    try:
        with pytest.raises(ValueError, match=r"recording 1\.aedat: packet at byte 1") as info:
            for result in pool.map(((k,) for k in range(6)), 3, no_check):
                got.append(result)
    finally:
        pool.close()
    assert got == [0]
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback) and "in fails_on_odd" in str(cause)


class Unpicklable(Exception):
    def __init__(self, what: object) -> None:
        super().__init__("cannot travel")
        self.what = what


def raises_unpicklable(k: int) -> int:
    raise Unpicklable(lambda: k)


def test_an_exception_that_cannot_be_sent_is_reported_not_lost() -> None:
    pool = WorkerPool(raises_unpicklable, 1)
    try:
        with pytest.raises(RuntimeError, match=r"sending the result of job 0"):
            next(pool.map([(0,)], 1, no_check))
    finally:
        pool.close()


def killed(k: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)  # what the out-of-memory killer does
    return k


def test_a_dead_worker_is_named_instead_of_waited_for() -> None:
    pool = WorkerPool(killed, 2)
    try:
        start = time.monotonic()
        with pytest.raises(
            WorkerError, match=r"a worker process \(pid \d+\) died \(signal SIGKILL"
        ):
            list(pool.map([(0,), (1,)], 2, no_check))
        assert time.monotonic() - start < 10
    finally:
        pool.close()


def test_close_stops_busy_workers_at_once() -> None:
    pool = WorkerPool(time.sleep, 2)
    pids = [proc.pid for proc in pool._processes]
    assert len(pids) == 2 and set(pids) <= {p.pid for p in multiprocessing.active_children()}
    deadline = time.monotonic() + 0.5

    def interrupt_soon() -> None:  # what BuildSignals.check does after Ctrl-C
        if time.monotonic() > deadline:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        list(pool.map([(60,), (60,)], 2, interrupt_soon))
    start = time.monotonic()
    pool.close()
    assert time.monotonic() - start < 5
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]  # gone, and reaped


def test_workers_ignore_ctrl_c_which_the_parent_handles() -> None:
    pool = WorkerPool(os.getpid, 1)
    try:
        (pid,) = pool.map([()], 1, no_check)
        os.kill(pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        assert next(pool.map([()], 1, no_check)) == pid  # the same worker, still serving
    finally:
        pool.close()
