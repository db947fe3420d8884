"""The worker processes of a build (the event cache's and the frame store's): jobs go out in
order, results come back in order, a few ahead; a worker's exception is raised in the parent, a
worker that dies stops the build, Ctrl-C or a kill becomes one line, and no worker outlives its
parent.

Built on public multiprocessing parts (processes, a job queue, one result pipe per worker,
`connection.wait` on pipes and process sentinels): no helper thread runs in the parent, so nothing
forks while another thread holds a lock, and each worker's process object is at hand to say how
it died (multiprocessing.Pool replaces a dead worker and never completes its task;
concurrent.futures only reports a "broken" pool).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

from dvsgkit.errors import DvsgkitError, InputError, Stopped

POLL_SECONDS = 0.1  # how often a waiting parent acts on a signal
TERM_GRACE = 5.0  # seconds a worker sent SIGTERM has to go before it gets SIGKILL
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class RemoteTraceback(DvsgkitError):
    """The traceback of an exception raised in a worker, as text: the cause of the re-raise."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class BuildSignals:
    """SIGINT (Ctrl-C) and SIGTERM (kill) during a build, noted by the handler and acted on by
    `check` between steps, which raises KeyboardInterrupt so the build's cleanup runs. Raising
    from the handler itself is not safe: it can fire inside a weakref callback (h5py and zarr run
    many), where Python prints the exception and carries on. Outside the main thread (where
    handlers cannot be installed) it does nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}
        self.pid = os.getpid()

    def __enter__(self) -> BuildSignals:
        if threading.current_thread() is threading.main_thread():  # else signal() would raise
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame: object) -> None:
        if os.getpid() != self.pid:  # a worker forked before it restored the default action:
            signal.signal(signum, signal.SIG_DFL)  # the signal (the pool stopping it) ends it
            os.kill(os.getpid(), signum)
            return
        self.received = signum

    def check(self) -> None:
        """Raise KeyboardInterrupt naming the signal if one has arrived."""
        if self.received is not None:
            raise KeyboardInterrupt(f"interrupted by {signal.Signals(self.received).name}")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _die_with_parent(parent: int, from_main: bool) -> None:
    """End this worker when its parent dies: on Linux PR_SET_PDEATHSIG with SIGKILL (a worker
    blocked in C code goes at once), elsewhere a thread that polls the parent once a second.
    The kernel's signal follows the thread that forked, not the process: a pool started by
    another thread, which may end before the pool does, polls too."""
    if sys.platform.startswith("linux") and from_main:
        # The running program's own symbols (libc's among them): ctypes.util.find_library would
        # run ldconfig in a subprocess, which a fork of a threaded parent must not do.
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the request above took effect
        os._exit(1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _serve(
    fn: Callable[..., Any], jobs: Any, results: Connection, parent: int, from_main: bool
) -> None:
    """A worker: run `fn` on each (index, args) job until the queue gives None; send back
    (index, result, None) or (index, exception, traceback text)."""
    # Ctrl-C reaches the whole process group; the parent alone acts on it and stops the workers
    # with SIGTERM, which must kill them even where the parent had installed a handler for it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent, from_main)
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


def _context() -> multiprocessing.context.BaseContext:
    """fork where it is safe (workers start at once, without re-importing torch); spawn where
    fork is missing or this process has initialised CUDA, which cannot be forked."""
    torch = sys.modules.get("torch")
    cuda_live = torch is not None and torch.cuda.is_initialized()
    if cuda_live or "fork" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    return multiprocessing.get_context("fork")


def forks() -> bool:
    """Whether a WorkerPool started now forks its workers, which then inherit this process's
    open files (memory files included), rather than spawning fresh interpreters."""
    return _context().get_start_method() == "fork"


class WorkerPool:
    """`workers` processes running `fn`, started at once (before the caller starts threads: where
    they are forked, they inherit the caller's memory files) and stopped by `close` (or at the
    end of a `with` block)."""

    def __init__(self, fn: Callable[..., Any], workers: int) -> None:
        if workers < 1:
            raise InputError(f"workers must be >= 1, got {workers}")
        self.size = workers
        self._issued = 0  # jobs sent by every map so far: a map's indices follow the last one's
        context = _context()
        self._jobs = context.SimpleQueue()
        self._processes: list[Any] = []
        self._results: list[Connection] = []
        from_main = threading.current_thread() is threading.main_thread()
        try:
            for _ in range(workers):
                receive, send = context.Pipe(duplex=False)
                args = (fn, self._jobs, send, os.getpid(), from_main)
                proc = context.Process(target=_serve, args=args, daemon=True)
                proc.start()
                send.close()  # the worker's end: EOF here once the worker is gone
                self._processes.append(proc)
                self._results.append(receive)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def map(
        self, jobs: Iterable[tuple[Any, ...]], ahead: int, check: Callable[[], None]
    ) -> Iterator[Any]:
        """`fn(*args)` for each job, in order, with at most `ahead` results in flight: job k goes
        out once the result of job k - ahead has been taken, which bounds memory (and lets job k
        reuse what job k - ahead - 1 used). `check` runs whenever the parent waits (to act on a
        signal). A worker's exception is raised here, its traceback as the cause; a worker that
        dies raises Stopped naming its pid and how it died. Results of jobs of an earlier map
        left unfinished (an error, a `break`) are dropped as they come."""
        first = taken = sent = self._issued
        pending = enumerate(jobs, first)
        done: dict[int, tuple[Any, str | None]] = {}
        exhausted = False
        while True:
            while not exhausted and sent < taken + ahead:
                job = next(pending, None)
                if job is None:
                    exhausted = True
                    break
                self._jobs.put(job)
                sent = self._issued = sent + 1
            if taken == sent and exhausted:
                return
            while taken not in done:
                check()
                self._receive(done, first)
            value, remote = done.pop(taken)
            if remote is not None:  # raised in job order, as if the jobs ran here
                value.__cause__ = RemoteTraceback(remote)
                raise value
            yield value
            taken += 1

    def _receive(self, done: dict[int, tuple[Any, str | None]], first: int) -> None:
        """Wait up to POLL_SECONDS for results and file those of jobs from `first` on in `done`
        by job index."""
        sentinels = {proc.sentinel for proc in self._processes}
        for ready in wait([*self._results, *sentinels], timeout=POLL_SECONDS):
            if ready in sentinels:
                continue  # results first: a worker may have answered just before it died
            try:
                index, value, remote = ready.recv()  # type: ignore[union-attr]
            except EOFError:
                continue  # its process has ended: reported below
            if index >= first:
                done[index] = (value, remote)
        for proc in self._processes:
            code = proc.exitcode
            if code is not None:
                how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                raise Stopped(
                    f"a worker process (pid {proc.pid}) died ({how}; SIGKILL is often the "
                    "out-of-memory killer); nothing was written: rerun, with --workers 1 if "
                    "memory is short"
                )

    def close(self) -> None:
        """Stop every worker (SIGTERM: busy ones too, at once) and wait for them to go. One
        still there after TERM_GRACE seconds gets SIGKILL: a SIGTERM that reached it as it was
        forked, before it restored the default action, was lost (Python clears the signals a
        child inherits)."""
        for proc in self._processes:
            if proc.exitcode is None:
                proc.terminate()
        for proc in self._processes:
            proc.join(TERM_GRACE)
            if proc.exitcode is None:
                proc.kill()
                proc.join()
            proc.close()
        for conn in self._results:
            conn.close()
        self._jobs.close()
        self._processes, self._results = [], []
