"""The event build's worker processes: jobs go out in order, results come back in order, a few
ahead, and a worker that dies or fails stops the build at once.

Built on public multiprocessing parts only (processes, a job queue, one result pipe per worker,
`connection.wait` on pipes and process sentinels): no helper thread runs in the parent, so
nothing forks while another thread holds a lock, and the process object of every worker is at
hand to say how one died (multiprocessing.Pool replaces a dead worker and never completes its
task; concurrent.futures only reports a "broken" pool).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

from dvsgkit.store.workers import die_with_parent

POLL_SECONDS = 0.1  # how often a waiting parent acts on a signal


class WorkerError(RuntimeError):
    """A worker process of the build died (killed, out of memory); nothing was written."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as text: the cause of the re-raise."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _serve(
    fn: Callable[..., Any],
    initializer: Callable[[], None] | None,
    jobs: Any,
    results: Connection,
    parent: int,
) -> None:
    """A worker: run `fn` on each (index, args) job until the queue gives None; send back
    (index, result, None) or (index, exception, traceback text)."""
    # Ctrl-C is handled once, by the parent, which then stops every worker with SIGTERM, which
    # must kill it even if the parent installed a handler for it (die_with_parent restores it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)  # a build killed with SIGKILL leaves no worker behind
    if initializer is not None:
        initializer()
    while (job := jobs.get()) is not None:
        index, args = job
        try:
            reply = (index, fn(*args), None)
        except Exception as exc:  # the parent raises it: nothing is swallowed
            reply = (index, exc, traceback.format_exc())
        try:
            results.send(reply)
        except Exception as exc:  # the result or the exception does not pickle
            failure = RuntimeError(f"{type(exc).__name__} sending the result of job {index}: {exc}")
            results.send((index, failure, traceback.format_exc()))


class WorkerPool:
    """`workers` processes running `fn`, started at once (before the caller starts threads:
    on Linux they are forked, and inherit the caller's memory files) and stopped by `close`.
    `initializer` runs first in each worker."""

    def __init__(
        self, fn: Callable[..., Any], workers: int, initializer: Callable[[], None] | None = None
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        self._jobs = context.SimpleQueue()
        self._processes: list[Any] = []
        self._results: list[Connection] = []
        try:
            for _ in range(workers):
                receive, send = context.Pipe(duplex=False)
                args = (fn, initializer, self._jobs, send, os.getpid())
                proc = context.Process(target=_serve, args=args, daemon=True)
                proc.start()
                send.close()  # the worker's end: EOF here once the worker is gone
                self._processes.append(proc)
                self._results.append(receive)
        except BaseException:
            self.close()
            raise

    def map(
        self, jobs: Iterable[tuple[Any, ...]], ahead: int, check: Callable[[], None]
    ) -> Iterator[Any]:
        """`fn(*args)` for each job, in order. Job k is handed out only once the results before
        k - ahead + 1 have been taken (the caller has resumed this iterator after each): at most
        `ahead` results are in flight, which bounds memory, and lets job k reuse what result
        k - ahead - 1 used. `check` runs whenever the parent waits (to act on a signal). A
        worker's exception is raised here (its traceback as the cause); a worker that dies
        raises WorkerError naming its pid and how it died. One map at a time: taken to its end,
        or followed by `close`."""
        pending = iter(enumerate(jobs))
        done: dict[int, tuple[Any, str | None]] = {}
        taken = sent = 0
        exhausted = False
        while True:
            while not exhausted and sent < taken + ahead:
                job = next(pending, None)
                if job is None:
                    exhausted = True
                    break
                self._jobs.put(job)
                sent += 1
            if taken == sent and exhausted:
                return
            while taken not in done:
                check()
                self._receive(done)
            value, remote = done.pop(taken)
            if remote is not None:  # raised in job order, as if the jobs ran here
                value.__cause__ = RemoteTraceback(remote)
                raise value
            yield value
            taken += 1

    def _receive(self, done: dict[int, tuple[Any, str | None]]) -> None:
        """Wait up to POLL_SECONDS for results; store them in `done` by job index, as (result,
        None) or (exception, its traceback text)."""
        sentinels = {proc.sentinel: proc for proc in self._processes}
        for ready in wait([*self._results, *sentinels], timeout=POLL_SECONDS):
            if ready in sentinels:
                # Results first: a worker may have answered just before it died.
                continue
            try:
                index, value, remote = ready.recv()  # type: ignore[union-attr]
            except EOFError:
                continue  # its process has ended: reported below
            done[index] = (value, remote)
        self._check_alive()

    def _check_alive(self) -> None:
        """Raise WorkerError naming the first worker process that has exited, and how."""
        for proc in self._processes:
            code = proc.exitcode
            if code is not None:
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                raise WorkerError(
                    f"a worker process (pid {proc.pid}) died ({how}; SIGKILL is often the "
                    "out-of-memory killer); nothing was written: rerun, with --workers 1 if "
                    "memory is short"
                )

    def close(self) -> None:
        """Stop every worker (SIGTERM: busy ones too, at once) and wait for them to go."""
        for proc in self._processes:
            if proc.exitcode is None:
                proc.terminate()
        for proc in self._processes:
            proc.join()
            proc.close()
        for conn in self._results:
            conn.close()
        self._jobs.close()
        self._processes, self._results = [], []
