"""The one worker pool (`dvsgkit.pool.WorkerPool`, used by the event cache's and the frame
store's builds) with real processes: order, look-ahead, failures, shutdown, workers that die
with their parent; and BuildSignals (a signal is noted, raised only at the next check).

The pool is `WorkerPool(fn, workers)`, a context manager, with `.map(jobs, ahead, check)`; a
worker that dies raises `dvsgkit.errors.Stopped` (a DvsgkitError: one line in the CLI)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dvsgkit.errors import InputError, Stopped
from dvsgkit.pool import BuildSignals, RemoteTraceback, WorkerPool

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the workers are forked (Linux)")


def no_check() -> None:
    pass


def slower_first(k: int, folder: str) -> int:
    """Job k notes that it started, then takes longer the earlier it comes."""
    Path(folder, f"started-{k}").touch()
    time.sleep(0.05 * (5 - k) if k < 5 else 0)
    return k * k


def test_results_come_in_job_order_with_at_most_ahead_in_flight(tmp_path: Path) -> None:
    got = []
    with WorkerPool(slower_first, 3) as pool:
        for k, result in enumerate(pool.map(((k, str(tmp_path)) for k in range(12)), 2, no_check)):
            started = len(list(tmp_path.glob("started-*")))
            assert started <= k + 2, f"{started} jobs started while result {k} was taken"
            got.append(result)
            time.sleep(0.05)  # a slow consumer: the look-ahead must not run away
    assert got == [k * k for k in range(12)]


def test_a_pool_needs_a_worker() -> None:
    with pytest.raises(InputError, match="workers must be >= 1, got 0"):
        WorkerPool(os.getpid, 0)  # a pool without workers would wait for results forever


def tagged(tag: str, k: int) -> tuple[str, int]:
    return tag, k


def test_a_map_left_unfinished_gives_nothing_to_the_next() -> None:
    with WorkerPool(tagged, 1) as pool:
        for _ in pool.map((("first", k) for k in range(6)), 3, no_check):
            break  # jobs 1 and 2 are still on their way
        second = list(pool.map((("second", k) for k in range(4)), 3, no_check))
        assert second == [("second", k) for k in range(4)]
    with WorkerPool(fails_on_odd, 1) as pool:  # left after an error: jobs 2 and 3 still run
        with pytest.raises(ValueError, match="recording 1"):
            list(pool.map(((k,) for k in range(6)), 4, no_check))
        assert list(pool.map(((2 * k,) for k in range(3)), 2, no_check)) == [0, 2, 4]


def fails_on_odd(k: int) -> int:
    if k % 2:
        time.sleep(0.5 if k == 1 else 0)  # job 3 fails first, job 1 comes first
        raise ValueError(f"recording {k}.aedat: packet at byte {k} is bad")
    return k


def test_a_worker_exception_is_raised_in_job_order_with_its_traceback() -> None:
    got = []
    with (
        WorkerPool(fails_on_odd, 2) as pool,
        pytest.raises(ValueError, match=r"recording 1\.aedat: packet at byte 1") as info,
    ):
        for result in pool.map(((k,) for k in range(6)), 3, no_check):
            got.append(result)
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
    with (
        WorkerPool(raises_unpicklable, 1) as pool,
        pytest.raises(RuntimeError, match=r"sending the result of job 0"),
    ):
        next(pool.map([(0,)], 1, no_check))


def killed(k: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)  # what the out-of-memory killer does
    return k


def test_a_dead_worker_is_named_instead_of_waited_for() -> None:
    start = time.monotonic()
    with (
        WorkerPool(killed, 2) as pool,
        pytest.raises(Stopped, match=r"^a worker process \(pid \d+\) died \(signal SIGKILL"),
    ):
        list(pool.map([(0,), (1,)], 2, no_check))
    assert time.monotonic() - start < 10


def _workers(before: set[int]) -> list[int]:
    return sorted({p.pid for p in multiprocessing.active_children()} - before)


def test_close_stops_busy_workers_at_once() -> None:
    before = {p.pid for p in multiprocessing.active_children()}
    # A build notes SIGTERM in its own process; a worker forked from it must still die of it.
    with BuildSignals():
        pool = WorkerPool(time.sleep, 2)
        pids = _workers(before)
        assert len(pids) == 2
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


def deaf_to_sigterm() -> int:
    """What a worker is left as when a SIGTERM reached it as it was forked, before it restored
    the default action: Python clears the signals a child inherits, so that one is lost."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return os.getpid()


def test_close_ends_a_worker_that_outlives_sigterm() -> None:
    pool = WorkerPool(deaf_to_sigterm, 1)
    pid = next(pool.map([()], 1, no_check))  # then it waits for a job, SIGTERM ignored
    closing = threading.Thread(target=pool.close, daemon=True)
    closing.start()
    closing.join(timeout=30)
    try:
        assert not closing.is_alive(), "close waits for a worker that ignores SIGTERM"
        assert not Path(f"/proc/{pid}").exists()  # gone, and reaped
    finally:
        if closing.is_alive():
            os.kill(pid, signal.SIGKILL)


def test_workers_ignore_ctrl_c_which_the_parent_handles() -> None:
    with WorkerPool(os.getpid, 1) as pool:
        (pid,) = pool.map([()], 1, no_check)
        os.kill(pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        assert next(pool.map([()], 1, no_check)) == pid  # the same worker, still serving


def test_a_pool_started_by_a_thread_outlives_the_thread() -> None:
    """The kernel's parent-death signal follows the thread that forked: a pool made by a thread
    that has ended since must still work."""
    made: list[WorkerPool] = []

    def make() -> None:
        pool = WorkerPool(os.getpid, 1)
        made.append(pool)
        list(pool.map([()], 1, no_check))  # the worker is serving before the thread ends

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    with made[0] as pool:
        assert next(pool.map([()], 1, no_check)) != os.getpid()


def test_workers_are_spawned_where_they_cannot_be_forked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that has initialised CUDA (or a platform without fork) spawns its workers:
    fresh interpreters, the same answers."""
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    with WorkerPool(os.getpid, 2) as pool:
        pids = list(pool.map([()] * 4, 2, no_check))
        assert os.getpid() not in pids and len(pids) == 4
    with (
        WorkerPool(int, 1) as pool,
        pytest.raises(ValueError, match="invalid literal") as info,
    ):
        list(pool.map([("7",), ("x",)], 2, no_check))
    assert isinstance(info.value.__cause__, RemoteTraceback)


# A parent that starts a pool (from its main thread, or from another one) whose two workers
# report their pids and get busy; the test kills the parent with SIGKILL.
PARENT = """
import os, sys, threading, time
from dvsgkit.pool import WorkerPool

def busy(k):
    os.write(1, f"{os.getpid()}\\n".encode())  # one write: never interleaved with the other's
    time.sleep(600)

def run():
    with WorkerPool(busy, 2) as pool:
        list(pool.map([(0,), (1,)], 2, lambda: None))

if sys.argv[1] == "thread":
    threading.Thread(target=run).start()
else:
    run()
"""


@pytest.mark.parametrize("started_by", ["main", "thread"])
def test_workers_die_with_their_parent(started_by: str) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, started_by],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    workers = [int(parent.stdout.readline()) for _ in range(2)]  # both busy
    try:
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10  # at once, or within the watching thread's second
        while any(Path(f"/proc/{pid}").exists() for pid in workers):
            assert time.monotonic() < deadline, f"workers {workers} outlived their parent"
            time.sleep(0.05)
    finally:
        for pid in workers:
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_is_raised_at_the_next_check_only(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    with BuildSignals() as signals:
        signals.check()  # nothing yet
        os.kill(os.getpid(), sig)  # delivered to this (main) thread before kill returns
        assert signals.received == sig  # noted, and nothing raised inside the handler
        with pytest.raises(KeyboardInterrupt, match=f"interrupted by {sig.name}"):
            signals.check()
    assert signal.getsignal(sig) is before  # the caller's handler is back


def test_signals_outside_the_main_thread_are_left_alone() -> None:
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    errors: list[BaseException] = []

    def build() -> None:
        try:
            with BuildSignals() as signals:
                signals.check()
        except BaseException as exc:  # examined below
            errors.append(exc)

    thread = threading.Thread(target=build)
    thread.start()
    thread.join()
    assert errors == [] and {s: signal.getsignal(s) for s in handlers} == handlers
