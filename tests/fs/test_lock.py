"""The build lock and the pool workers, with real processes: a killed build leaves no worker and
no held lock behind; a waiting build names the holder and gives up; a dead holder is replaced."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from dvsgkit.eventcache.build import build_event_cache
from dvsgkit.frames import FrameSpec
from dvsgkit.framestore.build import frame_store_path
from dvsgkit.framestore.read import open_frame_store
from dvsgkit.store import lock as lock_module
from dvsgkit.store.errors import LockTimeout
from dvsgkit.store.lock import build_lock
from dvsgkit.synth import write_synthetic_dataset
from dvsgkit_cli.main import cli


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(cond, seconds: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def kill_9_mid_build(
    code: str, args: list[str], tmp_path: Path, writing: Callable[[int], bool]
) -> int:
    """Run `code` (a slowed-down build) with `args`, SIGKILL it once `writing(its pid)` and its
    two workers are inside their first jobs, and check that the workers die with it; return its
    pid."""
    workers: list[int] = []
    with open(tmp_path / "stderr.txt", "wb") as log:  # not a pipe, which a worker would hold
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stderr=log)
    try:
        wait_for(lambda: len(children(proc.pid)) >= 2 or proc.poll() is not None, 60, "no workers")
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
        workers = children(proc.pid)
        wait_for(lambda: writing(proc.pid) or proc.poll() is not None, 60, "nothing written")
        time.sleep(0.5)  # the workers are inside their first jobs
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        wait_for(lambda: not any(alive(w) for w in workers), 10, f"workers {workers} outlived it")
    finally:
        for pid in workers:  # a failed test leaves nothing running either
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    return proc.pid


# The real command, each block slowed down so that the kill lands mid-build. `slow` is a
# top-level function of __main__, so that the pool can send it to its (forked) workers.
SLOW_BUILD = textwrap.dedent(
    """
    import sys, time
    from dvsgkit.framestore import build as s
    real = s._integrate_block
    def slow(task):
        time.sleep(1.0)
        return real(task)
    s._integrate_block = slow
    from dvsgkit_cli.main import cli
    cli(sys.argv[1:])
    """
)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_kill_9_of_a_build_leaves_no_worker_and_the_next_build_proceeds(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path, seed=3, train_trials=1, test_trials=1, events_per_sample=300)
    build_event_cache(tmp_path, workers=1, progress=False)
    args = ["frames", "--root", str(tmp_path), "-T", "2", "--workers", "2", "--no-progress"]
    kill_9_mid_build(SLOW_BUILD, args, tmp_path,
                     lambda _: any(tmp_path.glob(".frames_*.zarr.*.partial")))  # fmt: skip
    # The next build takes the lock at once (a short timeout: a held lock would fail it).
    start = time.monotonic()
    later = subprocess.run(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; "
         "from dvsgkit.framestore.build import make_frame_store;"
         " print(make_frame_store(Path(sys.argv[1]), FrameSpec(2, "
         " lock_timeout=20)).outcome)", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert later.returncode == 0, later.stderr
    assert later.stdout.strip() == "built" and time.monotonic() - start < 60
    assert "waiting for" not in later.stderr
    assert open_frame_store(frame_store_path(tmp_path, FrameSpec(2, "number")), "test")
    assert not list(tmp_path.glob("*.partial"))


SLOW_EVENTS = textwrap.dedent(
    """
    import sys, time
    from dvsgkit.eventcache import build as s
    real = s._process
    def slow(recording, spool=None):
        time.sleep(1.0)
        return real(recording, spool)
    s._process = slow
    from dvsgkit_cli.main import cli
    cli(sys.argv[1:])
    """
)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_kill_9_of_an_events_build_leaves_no_worker_and_the_next_build_cleans_up(
    tmp_path: Path,
) -> None:
    write_synthetic_dataset(tmp_path, seed=3, train_trials=3, test_trials=1, events_per_sample=300)
    args = ["events", "--root", str(tmp_path), "--workers", "2", "--no-progress"]

    def writing(pid: int) -> bool:
        return (tmp_path / f"events.h5.partial-{pid}").exists()

    pid = kill_9_mid_build(SLOW_EVENTS, args, tmp_path, writing)
    assert (tmp_path / f"events.h5.partial-{pid}").exists()  # killed mid-write
    build_event_cache(tmp_path, workers=2, progress=False)
    assert sorted(p.name for p in tmp_path.glob("events.h5*")) == ["events.h5"]


HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from dvsgkit.store.lock import build_lock
    with build_lock(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(60)
    """
)


def test_a_waiting_build_names_the_holder_and_gives_up(tmp_path: Path) -> None:
    lock = tmp_path / ".store.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        told: list[str] = []
        start = time.monotonic()
        expected = (
            rf"{lock} is held by process {holder.pid}, still building the store after 1 s of "
            rf"waiting; .* \(kill {holder.pid}\) and rerun"
        )
        with (
            pytest.raises(LockTimeout, match=expected),
            build_lock(lock, timeout=1.0, what="the store", notify=told.append),
        ):
            pass  # never reached
        assert 1.0 <= time.monotonic() - start < 10
        assert told == [f"waiting for process {holder.pid}, which is building the store "
                        f"(lock {lock})"]  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    with build_lock(lock, timeout=5):  # released with its holder's death
        assert lock.read_text() == f"{os.getpid()} {socket.gethostname()}\n"


ORPHAN = textwrap.dedent(
    """
    import fcntl, os, sys, time
    # An older build: holds the lock, records its pid, forks a child that inherits the lock's
    # descriptor and outlives it (what orphaned pool workers did).
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"{os.getpid()}\\n".encode())
    child = os.fork()
    if child == 0:
        null = os.open(os.devnull, os.O_WRONLY)  # the test reads until the parent exits
        os.dup2(null, 1)
        os.dup2(null, 2)
        time.sleep(60)
        os._exit(0)
    print(os.getpid(), child, flush=True)
    os._exit(0)
    """
)


def test_a_lock_whose_holder_died_is_taken_over_from_its_orphans(tmp_path: Path) -> None:
    lock = tmp_path / ".store.lock"
    out = subprocess.run(
        [sys.executable, "-c", ORPHAN, str(lock)], capture_output=True, text=True, timeout=30
    )
    dead, orphan = map(int, out.stdout.split())
    try:
        assert alive(orphan)
        start = time.monotonic()
        with build_lock(lock, timeout=2):
            assert lock.read_text().split()[0] == str(os.getpid()) != str(dead)
        assert time.monotonic() - start < 2
    finally:
        os.kill(orphan, signal.SIGKILL)


def test_a_lock_whose_holder_cannot_be_written_is_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk can fail the pid write after the flock is taken: the error names the lock
    # file, and the lock is not left held by a descriptor nobody will close.
    lock = tmp_path / "build.lock"

    def disk_full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lock_module.os, "pwrite", disk_full)
    with pytest.raises(OSError, match="No space left") as err, build_lock(lock, timeout=0):
        pytest.fail("entered a lock whose holder could not be written")
    assert err.value.filename == str(lock)
    monkeypatch.undo()
    with build_lock(lock, timeout=0):  # free: nothing kept it
        assert lock.read_text() == f"{os.getpid()} {socket.gethostname()}\n"


# Holds the flock of argv[1] and records a holder on another host, as a build or training run in
# another container or on another machine sharing the folder would.
ELSEWHERE = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"4000000 other-host\\n")  # a pid that is no process here
print("holding", flush=True)
time.sleep(60)
"""


def test_a_lock_held_from_another_host_is_never_taken_over(tmp_path: Path) -> None:
    lock = tmp_path / "train.lock"
    holder = subprocess.Popen([sys.executable, "-c", ELSEWHERE, str(lock)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(LockTimeout) as err, build_lock(lock, timeout=0.5, what="it"):
            pytest.fail("took over a lock whose holder cannot be checked from here")
        message = str(err.value)
        assert "held by process 4000000 on other-host" in message, message
        assert "stop it on other-host" in message and "kill" not in message
        assert lock.read_text() == "4000000 other-host\n"  # not replaced
        assert sorted(p.name for p in tmp_path.iterdir()) == ["train.lock"]
    finally:
        holder.kill()
        holder.wait()


# Takes the flock of argv[1] and stops just before recording itself (its pid), until told to go
# on by a line on stdin; then holds the lock until stdin closes.
CLAIMER = """
import sys
from pathlib import Path
from dvsgkit.store import lock as m

record = m._write_holder

def paused(fd, *path):
    print("locked", flush=True)
    sys.stdin.readline()
    record(fd, *path)

m._write_holder = paused
with m.build_lock(Path(sys.argv[1]), timeout=0):
    print("holding", flush=True)
    sys.stdin.read()
"""


def _waits_for_flock(path: Path) -> bool:
    """Whether some process is blocked waiting for an flock on `path` (Linux /proc/locks marks
    a waiter with "->"; the file is named by device and inode)."""
    try:
        inode = path.stat().st_ino
    except FileNotFoundError:
        return False
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and any(f.count(":") == 2 and f.endswith(f":{inode}") for f in fields):
            return True
    return False


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_a_take_over_never_makes_a_second_holder_of_a_lock_just_taken(tmp_path: Path) -> None:
    """A killed holder left its pid in the lock file. One process takes the free flock and,
    before it has recorded itself, another reads the dead pid and would take the lock over:
    it must wait for the first one's record and be refused, not hold a new lock file beside
    it."""
    lock = tmp_path / "build.lock"
    lock.write_text(f"{10**9} {socket.gethostname()}\n")  # no process has that pid
    first = subprocess.Popen([sys.executable, "-c", CLAIMER, str(lock)], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    outcome: list[BaseException | None] = []

    def second() -> None:
        try:
            with build_lock(lock, timeout=0):
                pass
            outcome.append(None)
        except BaseException as exc:  # examined below
            outcome.append(exc)

    try:
        assert first.stdout.readline().strip() == "locked"  # flock taken, pid not yet written
        thread = threading.Thread(target=second)
        thread.start()
        # Let the first one go on once the second waits for it (or has finished without).
        guard = lock.with_name(lock.name + ".takeover")
        deadline = time.monotonic() + 10
        while thread.is_alive() and not _waits_for_flock(guard) and time.monotonic() < deadline:
            time.sleep(0.01)
        first.stdin.write("go\n")
        first.stdin.flush()
        thread.join(timeout=30)
        assert first.stdout.readline().strip() == "holding"
        assert outcome and isinstance(outcome[0], LockTimeout), f"the second one got {outcome}"
        assert f"process {first.pid} is building" in str(outcome[0])
        assert lock.read_text() == f"{first.pid} {socket.gethostname()}\n"
    finally:
        first.kill()
        first.wait()


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_a_released_lock_leaves_no_file_and_a_waiter_on_the_removed_file_tries_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The holder removes the lock file as it lets go. A waiter that opened the file before, and
    is blocked on its flock, then gets the flock of a file that no path names: it must not take
    that for the lock, but take the lock on the path, where a third one is refused."""
    lock = tmp_path / "train.lock"
    try_lock = lock_module._try_lock

    def blocking_in_the_waiter(fd: int, path: Path) -> bool:
        if threading.current_thread().name != "waiter":
            return try_lock(fd, path)
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until the file it opened is let go
        return True

    monkeypatch.setattr(lock_module, "_try_lock", blocking_in_the_waiter)
    entered, leave = threading.Event(), threading.Event()
    seen: list[str] = []

    def waiter() -> None:
        with build_lock(lock, timeout=10):
            seen.append(lock.read_text() if lock.exists() else "no lock file")
            entered.set()
            leave.wait(30)

    thread = threading.Thread(target=waiter, name="waiter")
    with build_lock(lock, timeout=0):
        thread.start()
        wait_for(lambda: _waits_for_flock(lock), 10, "the waiter never blocked on the lock file")
    try:
        assert entered.wait(10), "the waiter never took the lock"
        assert seen == [f"{os.getpid()} {socket.gethostname()}\n"]  # the file at the path
        with pytest.raises(LockTimeout), build_lock(lock, timeout=0):
            pytest.fail("a second holder beside the waiter")
    finally:
        leave.set()
        thread.join(timeout=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no lock file left behind


def test_an_error_while_claiming_a_lock_releases_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = tmp_path / "build.lock"

    def io_error(fd: int, path: Path) -> bool:
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    monkeypatch.setattr(lock_module, "_same_file", io_error)  # after the flock is taken
    with pytest.raises(OSError, match="Input/output error"), build_lock(lock, timeout=0):
        pytest.fail("entered a lock it could not claim")
    monkeypatch.undo()
    with build_lock(lock, timeout=0):  # free: the descriptor was closed
        assert lock.read_text() == f"{os.getpid()} {socket.gethostname()}\n"


def test_a_file_system_without_locks_gives_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_synthetic_dataset(tmp_path, seed=3, train_trials=1, test_trials=1, events_per_sample=300)

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(lock_module.fcntl, "flock", no_locks)
    result = CliRunner().invoke(cli, ["events", "--root", str(tmp_path), "--no-progress"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(f"Error: cannot lock {tmp_path / '.events.h5.lock'}: its file "
                                    "system does not support file locks")  # fmt: skip
    assert not list(tmp_path.glob("events.h5*"))
