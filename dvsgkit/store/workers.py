"""Pool workers of a store build: started with fork where that is safe, and ended with the
process that started them, so that a build killed with SIGKILL leaves no worker behind (one
that would keep the build lock's descriptor, and wait on a dead pipe, forever)."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# Set in the parent just before each fork: the child's parent, and whether the forking thread
# was the main thread (PR_SET_PDEATHSIG fires when the forking *thread* ends).
_forking_pid: int | None = None
_forked_from_main = False


def _before_fork() -> None:
    global _forking_pid, _forked_from_main
    _forking_pid = os.getpid()
    _forked_from_main = threading.current_thread() is threading.main_thread()


os.register_at_fork(before=_before_fork)


def die_with_parent(parent_pid: int | None = None) -> None:
    """Pool initializer: end this process when its parent dies. On Linux, for a worker forked by
    the parent's main thread, PR_SET_PDEATHSIG with SIGKILL (even a worker blocked in C code
    goes at once); otherwise a thread that polls the parent pid once a second. (The kernel's
    signal follows the forking thread: multiprocessing.Pool forks replacement workers from a
    helper thread whose end at pool.terminate() would kill them holding the pool's queue lock.)
    Also restores SIGTERM's default action, which a forked worker would otherwise inherit from a
    parent that only notes the signal. `parent_pid` defaults to the process that made this one.
    """
    forked = _forking_pid is not None and _forking_pid != os.getpid()
    parent = parent_pid
    if parent is None:  # forked: the pid noted before the fork; spawned: the parent right now
        parent = _forking_pid if forked else os.getppid()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux") and forked and _forked_from_main:
        # The running program's own symbols (libc's among them): ctypes.util.find_library would
        # run ldconfig in a subprocess, which a fork of a threaded parent must not do.
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:  # best effort: noticed within a second
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the request above took effect
        os._exit(1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def pool_context() -> multiprocessing.context.BaseContext:
    """fork where it is safe: workers start at once, not after re-importing the caller's modules
    (torch, ~seconds, under spawn). zarr resets its IO loop in a forked child; CUDA cannot be
    forked, so a process that has initialised it gets spawn."""
    torch = sys.modules.get("torch")
    cuda_live = torch is not None and torch.cuda.is_initialized()
    if cuda_live or "fork" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    return multiprocessing.get_context("fork")
