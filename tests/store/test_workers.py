"""The store builds' worker pools: never forked from the (threaded) build, ended with it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from dvsgkit.store.workers import die_with_parent, pool_context

# A build in a process where a thread holds a lock that every child forked from that process
# takes at start (as a child forked while another thread holds malloc's or logging's lock
# does): a worker forked from the build waits on it forever.
LOCKED_AT_FORK = textwrap.dedent(
    """
    import os, sys, threading
    from pathlib import Path
    lock = threading.Lock()
    held = threading.Event()
    def hold():
        with lock:
            held.set()
            threading.Event().wait()
    threading.Thread(target=hold, daemon=True).start()
    held.wait()
    os.register_at_fork(after_in_child=lock.acquire)
    from dvsgkit.store.events import EventCache, build_event_cache
    from dvsgkit.store.frames import build_frame_store, open_frame_store
    root = Path(sys.argv[1])
    with EventCache(build_event_cache(root, workers=2, progress=False)) as cache:
        print(cache.num_samples("train"), flush=True)
    store = open_frame_store(build_frame_store(root, 2, workers=2, progress=False), "train")
    print(store["labels"].shape[0], flush=True)
    """
)


def _synth(root: Path) -> None:
    from dvsgkit.synth import write_synthetic_dataset

    write_synthetic_dataset(root, seed=5, train_trials=2, test_trials=1, events_per_sample=300)


def test_builds_never_fork_a_process_with_threads(tmp_path: Path) -> None:
    _synth(tmp_path)
    try:
        done = subprocess.run([sys.executable, "-c", LOCKED_AT_FORK, str(tmp_path)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("a build hung: its workers were forked from a process with a held lock")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["24", "24"]  # 2 trials x 12 samples, as events and as frames


def test_the_start_method_is_not_fork() -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        assert pool_context().get_start_method() != "fork"
    finally:
        stop.set()


def _wait_for_build(build: int, ready: str) -> None:
    die_with_parent(build)
    Path(ready).write_text("ready")
    time.sleep(60)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_worker_ends_with_the_build_not_only_with_its_parent(tmp_path: Path) -> None:
    # The worker's parent is the fork server, which outlives this build: only the watch on the
    # build's pid ends the worker.
    build = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ready = tmp_path / "ready"
    worker = pool_context().Process(target=_wait_for_build, args=(build.pid, str(ready)))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline and worker.exitcode is None, "worker did not start"
            time.sleep(0.05)
        build.kill()
        build.wait()
        worker.join(10)
        assert worker.exitcode == 1, "the worker outlived the build"
    finally:
        build.kill()
        if worker.exitcode is None:
            worker.kill()
            worker.join()


# Builds again and again in a process that runs zarr's IO thread, tqdm's monitor thread and a
# thread that logs and allocates without pause: the conditions of a fork that hangs.
BUSY_BUILDS = textwrap.dedent(
    """
    import logging, shutil, sys, threading
    from pathlib import Path
    import numpy as np, zarr
    from tqdm import tqdm
    from dvsgkit.store.events import build_event_cache, event_cache_path
    root, times = Path(sys.argv[1]), int(sys.argv[2])
    zarr.open_array(str(root / "scratch.zarr"), mode="w", shape=(4,), dtype="i4")[:] = 1
    bar = tqdm(total=1, mininterval=0.01, disable=False, file=open("/dev/null", "w"))
    log = logging.getLogger("busy")
    log.addHandler(logging.NullHandler())
    def busy():
        while True:
            log.warning("busy %s", np.ones(1000).sum())
    threading.Thread(target=busy, daemon=True).start()
    assert threading.active_count() >= 3, threading.enumerate()
    for _ in range(times):
        event_cache_path(root).unlink(missing_ok=True)
        build_event_cache(root, workers=2, progress=True)
    print("built", times, flush=True)
    """
)


def test_repeated_builds_in_a_busy_threaded_process_do_not_hang(tmp_path: Path) -> None:
    _synth(tmp_path)
    times = 40
    try:
        done = subprocess.run([sys.executable, "-c", BUSY_BUILDS, str(tmp_path), str(times)],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"{times} builds did not finish in 300 s: one hung")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["built", str(times)]


UNGUARDED = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from dvsgkit.store.frames import build_frame_store
    build_frame_store(Path(sys.argv[1]), 2, workers=2, progress=False)
    """
)


def test_a_script_that_builds_at_its_top_level_fails_with_the_fix(tmp_path: Path) -> None:
    # Its workers run it again when they start: they must not build too (or wait on its lock).
    _synth(tmp_path)
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    try:
        done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("the build hung")
    assert done.returncode != 0
    assert f"{script} builds a store at its top level" in done.stderr
    assert "put that code under 'if __name__ == \"__main__\":'" in done.stderr
    assert not list(tmp_path.glob("frames_*")) and not list(tmp_path.glob(".*.partial"))
