"""Pool workers of a store build: never forked from a process that runs threads, and ended
with the build that started them, so that a build killed with SIGKILL leaves no worker behind
(one that would keep the build lock's descriptor, and wait on a dead pipe, forever)."""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.forkserver
import os
import select
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# Imported once by the fork server, before it forks any worker: workers of both builds start
# with these modules (numpy, h5py, zarr) loaded instead of importing them each time.
WORKER_MODULES = ["dvsgkit.store.events", "dvsgkit.store.frames"]

_forkserver_ready = False


def pool_context() -> multiprocessing.context.BaseContext:
    """The start method of the builds' worker pools: `forkserver` where there is one (Linux, macOS),
    else spawn. Forking the build itself is not safe: it runs threads (zarr's IO loop, tqdm's
    monitor, torch's pools) and a child forked while one of them holds a lock (malloc's, the
    logging module's, an import lock) waits on it forever. The fork server is a single-threaded
    process, started once per process with WORKER_MODULES imported, that forks each worker.
    The first call starts it, and it imports them while the caller goes on: call this early."""
    global _forkserver_ready
    if _importing_main_in_a_worker():
        # A worker runs the caller's script again (as `__mp_main__`) before any work: one that
        # builds at its top level would build again from every worker, or wait on the lock.
        raise RuntimeError(
            f"{sys.modules['__mp_main__'].__file__} builds a store at its top level, and a "
            "worker process runs it again when it starts: put that code under "
            "'if __name__ == \"__main__\":'"
        )
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    if not _forkserver_ready:
        # Read by the server when it starts (the first pool of this process), ignored after.
        context.set_forkserver_preload(WORKER_MODULES)
        multiprocessing.forkserver.ensure_running()
        _forkserver_ready = True
    return context


def _importing_main_in_a_worker() -> bool:
    main = sys.modules.get("__mp_main__")
    return main is not None and main is not sys.modules.get("__main__")


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: end this worker when the build, process `parent_pid`, ends. A thread
    waits on the build (a pidfd on Linux: at once; elsewhere a poll of the pid once a second);
    on Linux the kernel also kills the worker (PR_SET_PDEATHSIG) when its own parent, the fork
    server, ends, which it does when the build does. Also restores SIGTERM's default action,
    which a worker would otherwise keep from a parent that only notes the signal."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    server = os.getppid()  # the fork server, or the build itself under spawn
    if sys.platform.startswith("linux"):
        # The running program's own symbols (libc's among them): ctypes.util.find_library would
        # run ldconfig in a subprocess.
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != server:  # the parent died before the request above took effect
            os._exit(1)
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(parent_pid)
        except ProcessLookupError:  # the build is gone already
            os._exit(1)
        threading.Thread(target=_wait_pidfd, args=(pidfd,), daemon=True).start()
    else:  # spawned by the build itself (Windows), or forked by a server (macOS)
        direct = server == parent_pid
        threading.Thread(target=_poll_pid, args=(parent_pid, direct), daemon=True).start()


def _wait_pidfd(pidfd: int) -> None:
    select.select([pidfd], [], [])  # readable when the process has ended
    os._exit(1)


def _poll_pid(pid: int, direct: bool) -> None:
    while _alive(pid, direct):
        time.sleep(1.0)
    os._exit(1)


def _alive(pid: int, direct: bool) -> bool:
    if direct:  # no signal 0 needed (on Windows, os.kill would end the process)
        return os.getppid() == pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, or its pid reused by another user's process
        pass
    return True
