"""The one lock of dvsgkit: a store build, an extraction or a training run at a time.

An flock on `LOCK` whose file records the holder as "PID HOST". A waiting process names the
holder and gives up after a bounded time. The holder empties and removes the file before it lets
go, so a finished job leaves nothing; a process that locked a file no path names any more tries
again. An flock belongs to the open file, so a killed holder's forked children can keep it held:
a lock whose recorded holder is dead is taken over (its file removed, under a guard on the
folder). A holder on another host sharing the folder is never taken over: its pid means nothing
here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from dvsgkit.errors import LockTimeout, StorageError
from dvsgkit.fs import pid_alive

DEFAULT_LOCK_TIMEOUT = 300.0  # seconds a build waits for another build of the same store
PID_GRACE = 1.0  # seconds a lock held by an unnamed process is retried before it is reported


class Holder(NamedTuple):
    """Who holds a lock, as its file says: "PID HOST" (files of older versions: "PID")."""

    pid: int
    host: str | None

    @property
    def elsewhere(self) -> bool:
        """Held from another machine or container sharing the folder."""
        return self.host is not None and self.host != socket.gethostname()

    def dead(self) -> bool:
        """Its process has ended (known only for a holder on this machine)."""
        return not self.elsewhere and not pid_alive(self.pid)

    def describe(self) -> tuple[str, str]:
        """('process P [on HOST]', what to do about it) for messages."""
        if self.elsewhere:
            return f"process {self.pid} on {self.host}", f"stop it on {self.host}"
        return f"process {self.pid}", f"stop it (kill {self.pid})"


def lock_of(target: Path) -> Path:
    """The lock file of what is written at `target`: `.NAME.lock` beside it."""
    return Path(target).with_name(f".{Path(target).name}.lock")


def to_stderr(line: str) -> None:
    """A `notify` for build_lock: the line on stderr, at once."""
    print(line, file=sys.stderr, flush=True)


def _holder(fd: int) -> Holder | None:
    try:
        words = os.pread(fd, 320, 0).decode("utf-8", "replace").split()
    except OSError:
        return None
    if not words or not words[0].isdigit():
        return None
    return Holder(int(words[0]), words[1] if len(words) > 1 else None)


def _try_lock(fd: int, path: Path) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        if exc.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
            raise StorageError(
                exc.errno,
                f"cannot lock {path}: its file system does not support file locks (flock); use "
                "one that does (a local disk, NFSv4, Lustre mounted with -o flock)",
            ) from exc
        raise
    return True


def _names(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


@contextlib.contextmanager
def _guard(path: Path) -> Iterator[None]:
    """Serialises take-overs of `path` with claims of a file that names a dead holder: an flock
    on the folder, which leaves no file behind."""
    fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _claim(fd: int, path: Path) -> bool:
    """Record this process in the lock file `fd`, just locked, unless the file left the path
    meanwhile (its holder removed it, or a take-over did): False, try again. A file that still
    names a holder (a killed one) may be taken over at this moment, by a process that found
    that holder dead when this one did not (it died since): decide under the guard."""
    with _guard(path) if _holder(fd) is not None else contextlib.nullcontext():
        if not _names(fd, path):
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return True


def _take_over(path: Path) -> None:
    """Remove the lock file when it still names a dead holder (whose orphans keep its flock); a
    claim of it waits for the guard, then finds it gone."""
    with _guard(path):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            holder = _holder(fd)
            if holder is not None and holder.dead() and _names(fd, path):
                os.unlink(path)
        finally:
            os.close(fd)


def _acquire(path: Path) -> tuple[int | None, Holder | None]:
    """One attempt: (descriptor, None) when this process now holds the lock, else (None, the
    holder its file names, if any). A file that left the path once locked is no answer: the
    attempt goes on with the file now at the path."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        locked = False
        try:
            locked = _try_lock(fd, path)
            if locked and _claim(fd, path):
                return fd, None
            holder = None if locked else _holder(fd)
        except BaseException as exc:
            if isinstance(exc, OSError):
                exc.filename = exc.filename or str(path)
            if locked:  # a claim that failed (a full disk): leave no lock file naming nobody
                _release(fd, path)
            else:
                os.close(fd)  # never leave a lock held by a descriptor nobody will close
            raise
        os.close(fd)
        if not locked:
            return None, holder


@contextlib.contextmanager
def build_lock(
    path: Path,
    *,
    timeout: float = DEFAULT_LOCK_TIMEOUT,
    what: str = "this store",
    doing: str = "building",
    notify: Callable[[str], None] | None = None,
    poll: float = 0.2,
) -> Iterator[None]:
    """Hold the exclusive lock `path` for the block. While another live process holds it, wait
    up to `timeout` seconds, telling `notify` once who holds it ("waiting for process P, which
    is {doing} {what}"), then raise LockTimeout naming the holder and the lock file (with
    `timeout` 0: at once). The caller turns an OSError (a full or read-only disk) into its
    own line (`dvsgkit.errors.storage_errors`)."""
    path = Path(path)
    start = time.monotonic()
    told = False
    while True:
        fd, holder = _acquire(path)
        if fd is not None:
            break
        if holder is not None and holder.dead():
            _take_over(path)
            continue
        if holder is None and time.monotonic() < start + PID_GRACE:
            time.sleep(poll)  # a holder names itself just after it locks
            continue
        who, fix = holder.describe() if holder is not None else ("another process", "stop it")
        fix = f"let it finish, or {fix} and rerun"
        if timeout <= 0:
            raise LockTimeout(f"{who} is {doing} {what} (it holds {path}); {fix}")
        if time.monotonic() - start >= timeout:
            raise LockTimeout(
                f"{path} is held by {who}, still {doing} {what} after {timeout:.0f} s of "
                f"waiting; {fix}"
            )
        if not told and notify is not None:
            notify(f"waiting for {who}, which is {doing} {what} (lock {path})")
            told = True
        time.sleep(poll)
    try:
        yield
    finally:
        _release(fd, path)


def _release(fd: int, path: Path) -> None:
    """Empty and remove the lock file while still holding it, then close it (which lets go).
    A process waiting on it then locks a file no path names, and tries again on a fresh one;
    removing it after the close instead could remove a file another process had just claimed."""
    try:
        with contextlib.suppress(OSError):  # an unwritable lock file must not hide the error
            os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):  # a folder made read-only meanwhile: the file stays
            if _names(fd, path):  # never a file that a take-over put in its place
                os.unlink(path)
    finally:
        os.close(fd)
