"""The one lock (`dvsgkit.fs.lock`), with real processes held at the exact step a race needs
(pipes, /proc/locks), never a sleep that hopes: one holder at a time; a waiter names the holder
and gives up; the file goes when its holder lets go; a lock whose recorded holder is dead is
taken over (its file removed under a guard, an flock on the folder), one on another host never;
a killed build leaves no worker and no held lock behind.

Since the storage core: lock files are removed on release (before, they stayed, emptied); a
take-over removes the stale file instead of renaming a new one in; nothing closes the lock's
descriptor in forked children any more (orphans keeping an flock are what the take-over is for,
and pool workers die with their parent)."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from dvsgkit.errors import LockTimeout, StorageError
from dvsgkit.fs import lock as lock_module
from dvsgkit.fs.lock import build_lock, lock_of
from dvsgkit_cli.main import cli

if TYPE_CHECKING:
    from conftest import Writers  # the `killable` fixture

LINUX_PROC = pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc")
HERE = socket.gethostname()
DEAD = 10**9  # a pid no process has


def record(pid: int | None = None) -> str:
    """What a lock file holds for `pid` (this process) on this host."""
    return f"{os.getpid() if pid is None else pid} {HERE}\n"


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
        time.sleep(0.01)


def waits_for_flock(path: Path) -> bool:
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


def test_the_lock_of_a_target_is_a_hidden_file_beside_it(tmp_path: Path) -> None:
    assert lock_of(tmp_path / "events.h5") == tmp_path / ".events.h5.lock"


# A build whose parent stops, holding the lock, at its first free-space check once its two
# workers run (the public seam `dvsgkit.fs.free_bytes`), to be killed there for real.
STOPPED_BUILD = """
import multiprocessing, sys, time
from dvsgkit import fs
real = fs.free_bytes
def stopped(folder):
    if multiprocessing.active_children():
        print("writing", flush=True)
        time.sleep(600)
    return real(folder)
fs.free_bytes = stopped
from dvsgkit_cli.main import cli
cli(sys.argv[1:])
"""


def kill_9_mid_build(killable: Writers, *args: object) -> int:
    """Run the command `args` as STOPPED_BUILD, SIGKILL it mid-build, check that its workers
    die with it; return its pid."""
    build = killable.start(STOPPED_BUILD, *args)
    workers = children(build.pid)
    try:
        assert len(workers) == 2, workers
        build.kill()
        build.wait()
        wait_for(lambda: not any(alive(w) for w in workers), 10, f"workers {workers} outlived it")
    finally:
        for pid in workers:  # a failed test leaves nothing running either
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    return build.pid


@LINUX_PROC
def test_kill_9_of_a_frames_build_leaves_no_worker_and_the_next_build_proceeds(
    tiny_root: Path, copy_root, tmp_path: Path, killable: Writers, capsys: pytest.CaptureFixture
) -> None:
    from dvsgkit.frames import FrameSpec
    from dvsgkit.framestore.build import build_frame_store
    from dvsgkit.framestore.layout import frame_store_path
    from dvsgkit.framestore.read import open_frame_store

    root = copy_root(tiny_root, tmp_path / "root", with_=("recordings", "events"))
    spec = FrameSpec(2, "number")
    args = ["frames", "--root", root, "-T", "2", "--workers", "2", "--no-progress"]
    pid = kill_9_mid_build(killable, *args)
    name = frame_store_path(root, spec).name
    assert list(root.glob(f".{name}.{pid}-*.partial"))  # killed mid-write
    assert (root / f".{name}.lock").read_text() == record(pid)  # never let go
    # The next build takes the lock at once (a held lock would time out) and sweeps.
    build = build_frame_store(root, spec, workers=1, progress=False, lock_timeout=0)
    assert build.outcome == "built" and "waiting for" not in capsys.readouterr().err
    assert open_frame_store(frame_store_path(root, spec), "test")
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary, no lock


@LINUX_PROC
def test_kill_9_of_an_events_build_leaves_no_worker_and_the_next_build_cleans_up(
    tiny_root: Path, copy_root, tmp_path: Path, killable: Writers
) -> None:
    from dvsgkit.eventcache.build import build_event_cache

    root = copy_root(tiny_root, tmp_path / "root", with_=("recordings",))
    pid = kill_9_mid_build(killable, "events", "--root", root, "--workers", "2", "--no-progress")
    assert list(root.glob(f".events.h5.{pid}-*.partial"))  # killed mid-write
    build_event_cache(root, workers=2, progress=False, lock_timeout=0)
    assert sorted(p.name for p in root.iterdir() if "events.h5" in p.name) == ["events.h5"]


HOLD = """
import sys, time
from pathlib import Path
from dvsgkit.fs.lock import build_lock
with build_lock(Path(sys.argv[1])):
    print("writing", flush=True)
    time.sleep(600)
"""


def test_a_waiting_build_names_the_holder_and_gives_up(tmp_path: Path, killable: Writers) -> None:
    lock = tmp_path / ".store.lock"
    holder = killable.start(HOLD, lock)
    assert lock.read_text() == record(holder.pid)
    told: list[str] = []
    start = time.monotonic()
    expected = (
        rf"{lock} is held by process {holder.pid}, still building the store after 1 s of "
        rf"waiting; let it finish, or stop it \(kill {holder.pid}\) and rerun"
    )
    with (
        pytest.raises(LockTimeout, match=expected),
        build_lock(lock, timeout=1.0, what="the store", notify=told.append),
    ):
        pytest.fail("entered a held lock")
    assert 1.0 <= time.monotonic() - start < 10
    assert told == [f"waiting for process {holder.pid}, which is building the store (lock {lock})"]
    with (
        pytest.raises(LockTimeout, match=rf"^process {holder.pid} is training it \(it holds "),
        build_lock(lock, timeout=0, what="it", doing="training"),
    ):
        pytest.fail("entered a held lock")
    holder.kill()
    holder.wait()
    with build_lock(lock, timeout=0):  # killed: its flock went with it, its record stayed
        assert lock.read_text() == record()
    assert sorted(tmp_path.iterdir()) == []  # a lock let go leaves no file


# An older build: holds the lock, records its pid (argv[2]: "PID" as versions before the host
# was recorded, or "PID HOST"), forks a child that inherits the lock's descriptor and outlives it
# (what orphaned workers did), and exits.
ORPHAN = """
import fcntl, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
host = " " + socket.gethostname() if sys.argv[2] == "host" else ""
os.write(fd, f"{os.getpid()}{host}\\n".encode())
child = os.fork()
if child == 0:
    null = os.open(os.devnull, os.O_WRONLY)  # the test reads until the parent exits
    os.dup2(null, 1)
    os.dup2(null, 2)
    time.sleep(600)
    os._exit(0)
print(os.getpid(), child, flush=True)
os._exit(0)
"""


@pytest.mark.parametrize("written", ["pid", "host"])
def test_a_lock_whose_holder_died_is_taken_over_from_its_orphans(
    tmp_path: Path, written: str
) -> None:
    lock = tmp_path / ".store.lock"
    out = subprocess.run([sys.executable, "-c", ORPHAN, str(lock), written],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    dead, orphan = map(int, out.stdout.split())
    try:
        assert alive(orphan) and lock.read_text().split()[0] == str(dead)
        with build_lock(lock, timeout=0):  # the orphan holds the flock: at once all the same
            assert lock.read_text() == record()
        assert sorted(tmp_path.iterdir()) == []
    finally:
        os.kill(orphan, signal.SIGKILL)


def test_a_lock_whose_holder_cannot_be_written_is_released_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk can fail the record after the flock is taken: the error names the lock file,
    # the lock is not left held by a descriptor nobody will close, and no file names nobody.
    lock = tmp_path / "build.lock"

    def disk_full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lock_module.os, "pwrite", disk_full)
    with pytest.raises(OSError, match="No space left") as err, build_lock(lock, timeout=0):
        pytest.fail("entered a lock whose holder could not be written")
    assert err.value.filename == str(lock)
    assert sorted(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with build_lock(lock, timeout=0):  # free: nothing kept it
        assert lock.read_text() == record()


def test_an_error_while_claiming_a_lock_releases_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = tmp_path / "build.lock"

    def io_error(fd: int, path: Path) -> bool:
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    monkeypatch.setattr(lock_module, "_names", io_error)  # after the flock is taken
    with pytest.raises(OSError, match="Input/output error"), build_lock(lock, timeout=0):
        pytest.fail("entered a lock it could not claim")
    monkeypatch.undo()
    with build_lock(lock, timeout=0):  # free: the descriptor was closed
        assert lock.read_text() == record()


# Holds the flock of argv[1] and records a holder on another host, as a build or training run in
# another container or on another machine sharing the folder would.
ELSEWHERE = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"4000000 other-host\\n")  # a pid that is no process here
print("writing", flush=True)
time.sleep(600)
"""


def test_a_lock_held_from_another_host_is_never_taken_over(
    tmp_path: Path, killable: Writers
) -> None:
    lock = tmp_path / "train.lock"
    killable.start(ELSEWHERE, lock)
    with pytest.raises(LockTimeout) as err, build_lock(lock, timeout=0.5, what="it"):
        pytest.fail("took over a lock whose holder cannot be checked from here")
    message = str(err.value)
    assert "held by process 4000000 on other-host" in message, message
    assert "stop it on other-host" in message and "kill" not in message
    assert lock.read_text() == "4000000 other-host\n"  # not removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.lock"]


# Claims the lock argv[1] with timeout 0 and stops at the step argv[2] names until a line comes
# on stdin: "locked" (flock taken, nothing read yet) or "claiming" (the file found at the path,
# this process not yet recorded). With argv[3] "alive", it finds every pid alive (a recorded
# holder that died just after it looked). Then it holds the lock until stdin closes.
CLAIMER = """
import sys
from pathlib import Path
from dvsgkit.fs import lock as m

step, paused = sys.argv[2], []

def pause_after(real):
    def wrapper(*args):
        result = real(*args)
        if result and not paused:
            paused.append(True)
            print(step, flush=True)
            sys.stdin.readline()
        return result
    return wrapper

if step == "locked":
    m._try_lock = pause_after(m._try_lock)
else:
    m._names = pause_after(m._names)
if sys.argv[3:] == ["alive"]:
    m.pid_alive = lambda pid: True
try:
    with m.build_lock(Path(sys.argv[1]), timeout=0):
        print("holding", flush=True)
        sys.stdin.read()
except m.LockTimeout as exc:
    print("refused:", exc, flush=True)
"""


class Claimer:
    """CLAIMER as a process, stopped at `step`."""

    def __init__(self, lock: Path, step: str, *more: str) -> None:
        args = [sys.executable, "-c", CLAIMER, str(lock), step, *more]
        self.proc = subprocess.Popen(args, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.line() == step

    def line(self) -> str:
        return self.proc.stdout.readline().strip()

    def go(self) -> str:
        """Let it go on; return what it says next ("holding", or "refused: ...")."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.line()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Contender(threading.Thread):
    """build_lock(lock, timeout) in a thread of this process, holding it until `leave` is set;
    `outcome`: "held" or the exception."""

    def __init__(self, lock: Path, timeout: float = 0, name: str = "contender") -> None:
        super().__init__(name=name, daemon=True)
        self.lock, self.timeout = lock, timeout
        self.entered, self.leave = threading.Event(), threading.Event()
        self.outcome: object = None
        self.seen = ""

    def run(self) -> None:
        try:
            with build_lock(self.lock, timeout=self.timeout):
                self.seen = self.lock.read_text()
                self.outcome = "held"
                self.entered.set()
                self.leave.wait(60)
        except BaseException as exc:  # examined by the test
            self.outcome = exc
            self.entered.set()


@LINUX_PROC
@pytest.mark.parametrize("seen", ["dead", "alive"])
def test_a_take_over_never_makes_a_second_holder_of_a_lock_being_claimed(
    tmp_path: Path, seen: str
) -> None:
    """A killed holder left its record. One process takes the free flock and, before it has
    recorded itself, another reads the dead pid and would take the lock over: it must wait for
    the first one's record (the guard) and be refused, not hold a new lock file beside it. Also
    when the claimer saw the recorded holder alive ("alive": it died just after)."""
    lock = tmp_path / "build.lock"
    lock.write_text(record(DEAD))
    first = Claimer(lock, "claiming", *(["alive"] if seen == "alive" else []))
    second = Contender(lock)
    try:
        second.start()
        # Let the first one go on once the second waits for the guard (or has finished without).
        wait_for(lambda: waits_for_flock(tmp_path) or second.entered.is_set(), 10, "no wait")
        assert first.go() == "holding"
        assert second.entered.wait(30)
        assert isinstance(second.outcome, LockTimeout), f"the second one got {second.outcome}"
        assert f"process {first.proc.pid} is building" in str(second.outcome)
        assert lock.read_text() == record(first.proc.pid)
    finally:
        second.leave.set()
        first.close()


@LINUX_PROC
def test_a_take_over_before_the_claim_leaves_the_claimer_to_try_again(tmp_path: Path) -> None:
    """The other order: the claimer has the flock of the stale file but has read nothing yet; a
    take-over removes that file and a third process locks a new one. The claimer, let go on,
    finds its file gone and is refused by the new holder."""
    lock = tmp_path / "build.lock"
    lock.write_text(record(DEAD))
    first = Claimer(lock, "locked")
    second = Contender(lock)
    try:
        second.start()
        assert second.entered.wait(30) and second.outcome == "held", second.outcome
        assert (
            first.go() == f"refused: process {os.getpid()} is building this store (it holds "
            f"{lock}); let it finish, or stop it (kill {os.getpid()}) and rerun"
        )
        assert lock.read_text() == record()
    finally:
        second.leave.set()
        second.join(30)
        first.close()
    assert sorted(tmp_path.iterdir()) == []


@LINUX_PROC
def test_a_holder_that_records_itself_late_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh lock file, flock taken, no record yet: a waiter retries for PID_GRACE and names
    the holder once it has written itself; one that never does is "another process"."""
    lock = tmp_path / "build.lock"
    first = Claimer(lock, "claiming")
    unnamed = threading.Event()
    holder_of = lock_module._holder

    def noting(fd: int) -> lock_module.Holder | None:
        holder = holder_of(fd)
        if holder is None and threading.current_thread().name == "waiter":
            unnamed.set()
        return holder

    monkeypatch.setattr(lock_module, "_holder", noting)
    monkeypatch.setattr(lock_module, "PID_GRACE", 600.0)
    waiter = Contender(lock, name="waiter")
    try:
        waiter.start()
        assert unnamed.wait(30)  # it found the flock held and nobody named
        assert not waiter.entered.is_set()  # and waits
        assert first.go() == "holding"
        assert waiter.entered.wait(30)
        assert f"process {first.proc.pid} is building" in str(waiter.outcome)
    finally:
        first.close()
    lock.unlink()
    silent = Claimer(lock, "claiming")
    try:
        monkeypatch.setattr(lock_module, "PID_GRACE", 0.2)
        start = time.monotonic()
        with pytest.raises(LockTimeout) as err, build_lock(lock, timeout=0):
            pytest.fail("entered a held lock")
        assert time.monotonic() - start >= 0.2
        assert str(err.value) == (f"another process is building this store (it holds {lock}); "
                                  "let it finish, or stop it and rerun")  # fmt: skip
    finally:
        silent.close()


@LINUX_PROC
def test_a_released_lock_leaves_no_file_and_a_waiter_on_the_removed_file_tries_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The holder removes the lock file as it lets go. A waiter that opened the file before, and
    is blocked on its flock, then gets the flock of a file that no path names: it must not take
    that for the lock, nor for a holder that has not yet recorded itself (timeout 0, no grace:
    it would give up), but take the lock on the path at once, where a third one is refused."""
    lock = tmp_path / "train.lock"
    try_lock = lock_module._try_lock

    def blocking_in_the_waiter(fd: int, path: Path) -> bool:
        if threading.current_thread().name != "waiter":
            return try_lock(fd, path)
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until the file it opened is let go
        return True

    monkeypatch.setattr(lock_module, "_try_lock", blocking_in_the_waiter)
    monkeypatch.setattr(lock_module, "PID_GRACE", 0.0)
    waiter = Contender(lock, name="waiter")
    with build_lock(lock, timeout=0):
        waiter.start()
        wait_for(lambda: waits_for_flock(lock), 10, "the waiter never blocked on the lock file")
    try:
        assert waiter.entered.wait(10) and waiter.outcome == "held", waiter.outcome
        assert waiter.seen == record()  # the file at the path
        with pytest.raises(LockTimeout), build_lock(lock, timeout=0):
            pytest.fail("a second holder beside the waiter")
    finally:
        waiter.leave.set()
        waiter.join(timeout=30)
    assert sorted(tmp_path.iterdir()) == []  # no lock file left behind


def test_a_file_system_without_locks_gives_one_line(
    tiny_root: Path, copy_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = copy_root(tiny_root, tmp_path, with_=("recordings",))

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(lock_module.fcntl, "flock", no_locks)
    with pytest.raises(StorageError) as err, build_lock(tmp_path / "x.lock"):
        pytest.fail("entered a lock it could not take")
    assert err.value.errno == errno.ENOLCK
    result = CliRunner().invoke(cli, ["events", "--root", str(root), "--no-progress"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(f"Error: cannot lock {root / '.events.h5.lock'}: its file "
                                    "system does not support file locks (flock); use one that "
                                    "does")  # fmt: skip
    assert not list(root.glob("*events.h5*[!k]"))  # no cache, no temporary
