"""The build lock of a store (and of a training run): one at a time, a waiting one told who
holds it.

The failure this prevents: an flock belongs to the open file, so a forked worker that inherits
the descriptor keeps the lock held after its parent is killed, and every later build waited
forever without a word. Here the descriptor is closed in every forked child, the lock file holds
the holder's pid and host, a waiting build names it and gives up after a bounded time, and a lock
whose recorded holder is dead (its descriptor kept by orphans) is taken over. A holder on another
host (or container) sharing the folder is never taken over: its pid cannot be checked from here.

The lock file exists only while the lock is held: the holder removes it before letting go (see
`_release`), and a process that locked a file no longer at the path tries again.
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

from dvsgkit.io.atomic import pid_alive
from dvsgkit.store.errors import LockTimeout, StoreWriteError

DEFAULT_LOCK_TIMEOUT = 300.0  # seconds a build waits for another build of the same store
PID_GRACE = 1.0  # seconds a lock held by an unnamed process is retried before it is reported

_held: set[int] = set()  # descriptors of the locks this process holds


def _after_fork_in_child() -> None:
    # An flock belongs to the open file, not the process: while any descriptor of it exists the
    # lock stays held. A forked child must not keep one, or it outlives a killed parent's lock.
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Holder(NamedTuple):
    """Who holds a lock, as its file says: "PID HOST" (files of older versions: "PID")."""

    pid: int
    host: str | None

    @property
    def elsewhere(self) -> bool:
        """Held from another machine or container sharing the folder: its pid means nothing
        here, so it can be neither checked nor taken over."""
        return self.host is not None and self.host != socket.gethostname()

    def dead(self) -> bool:
        """Its process has ended (known only for a holder on this machine)."""
        return not self.elsewhere and not pid_alive(self.pid)


def to_stderr(line: str) -> None:
    """A `notify` for build_lock: the line on stderr, at once."""
    print(line, file=sys.stderr, flush=True)


def _read_holder(fd: int) -> Holder | None:
    try:
        words = os.pread(fd, 320, 0).decode("utf-8", "replace").split()
    except OSError:
        return None
    if not words or not words[0].isdigit():
        return None
    return Holder(int(words[0]), words[1] if len(words) > 1 else None)


def _write_holder(fd: int, path: Path) -> None:
    """Record this process in the lock file `fd` (`path`); an error (a full disk) names `path`."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    except OSError as exc:
        exc.filename = exc.filename or str(path)
        raise


@contextlib.contextmanager
def _closed_on_error(fd: int) -> Iterator[None]:
    """Close `fd` (so releasing its flock) if the block raises: a lock must never stay held by
    a descriptor that nobody will close."""
    try:
        yield
    except BaseException:
        os.close(fd)
        raise


def _describe(holder: Holder | None) -> tuple[str, str]:
    """('process P [on HOST]', what to do about it) for messages."""
    if holder is None:
        return "another process", "let it finish, or stop it and rerun"
    if holder.elsewhere:
        return (
            f"process {holder.pid} on {holder.host}",
            f"let it finish, or stop it on {holder.host} and rerun",
        )
    return f"process {holder.pid}", f"let it finish, or stop it (kill {holder.pid}) and rerun"


def _try_lock(fd: int, path: Path) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        if exc.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
            raise StoreWriteError(
                f"cannot lock {path}: its file system does not support file locks (flock); use "
                "one that does (a local disk, NFSv4, Lustre mounted with -o flock)"
            ) from exc
        raise
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


@contextlib.contextmanager
def _takeover_guard(path: Path) -> Iterator[None]:
    """Serialises take-overs of `path`, and claims of a file that still names a dead holder."""
    with open(path.with_name(path.name + ".takeover"), "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        yield


def _claim(fd: int, path: Path) -> bool:
    """Record this process in the lock file `fd`, just locked, unless a take-over replaced the
    file meanwhile or its last holder removed it (False: it is not the lock any more). A file
    that still names a dead holder may be being taken over at this moment: decide under the
    take-over guard, so that a take-over finds either this process recorded or its own new file
    in place, never both holders."""
    stale = _read_holder(fd)
    with _takeover_guard(path) if stale is not None and stale.dead() else contextlib.nullcontext():
        if not _same_file(fd, path):
            return False
        _write_holder(fd, path)
    return True


def _take_over(path: Path) -> int | None:
    """Replace a lock file whose recorded holder is dead (its flock kept by orphans) with a new
    one that this process holds and names. Returns its descriptor, or None when someone else
    moved first or the lock was released meanwhile (try again)."""
    with _takeover_guard(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        with _closed_on_error(fd):
            holder = _read_holder(fd)
            if _try_lock(fd, path):  # released meanwhile: an ordinary acquisition
                if not _same_file(fd, path):  # and removed: try the path again
                    os.close(fd)
                    return None
                _write_holder(fd, path)
                return fd
        os.close(fd)
        if holder is None or not holder.dead():
            return None
        new = path.with_name(f"{path.name}.{os.getpid()}.new")
        fd = os.open(new, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            with _closed_on_error(fd):
                fcntl.flock(fd, fcntl.LOCK_EX)  # a fresh file: never contended
                _write_holder(fd, path)
                os.replace(new, path)
        except BaseException:
            new.unlink(missing_ok=True)
            raise
        return fd


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
    """Hold the exclusive build lock `path` (created if missing; it holds the holder's pid).

    While another live process holds it, wait up to `timeout` seconds, telling `notify` once who
    holds it ("waiting for process P, which is {doing} {what}"), then raise LockTimeout naming the
    holder and the lock file; with `timeout` 0, raise at once. A lock whose recorded holder has
    died (descriptors kept by orphaned children) is taken over.
    """
    path = Path(path)
    start = time.monotonic()
    deadline = start + timeout
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        with _closed_on_error(fd):
            locked = _try_lock(fd, path)
            if locked and _claim(fd, path):
                break
            holder = None if locked else _read_holder(fd)
        os.close(fd)
        if locked:
            continue  # replaced by a take-over, or removed by its holder, once we opened it
        if holder is not None and holder.dead():
            fd = _take_over(path)
            if fd is not None:
                break
            continue
        if holder is None and time.monotonic() < start + PID_GRACE:
            time.sleep(poll)  # a holder writes its pid just after taking the lock
            continue
        who, fix = _describe(holder)
        if timeout <= 0:
            raise LockTimeout(f"{who} is {doing} {what} (it holds {path}); {fix}")
        if time.monotonic() >= deadline:
            raise LockTimeout(
                f"{path} is held by {who}, still {doing} {what} after {timeout:.0f} s of "
                f"waiting; {fix}"
            )
        if not told and notify is not None:
            notify(f"waiting for {who}, which is {doing} {what} (lock {path})")
            told = True
        time.sleep(poll)
    _held.add(fd)
    try:
        yield
    finally:
        _held.discard(fd)
        _release(fd, path)


def _release(fd: int, path: Path) -> None:
    """Let go of the lock `fd` holds on `path` and remove the file, so that a finished build or
    run leaves no lock file behind. The file is emptied and unlinked while still locked, and only
    then closed (which releases the flock). A process that opened the file before and waits for
    its flock then locks a file that no path names: `_claim` sees that `path` no longer names it
    and that process tries again on a fresh file, where only one can win. Unlinking after the
    close instead could remove a file that a waiter had just locked and claimed."""
    try:
        with contextlib.suppress(OSError):  # an unwritable lock file must not hide the error
            os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):  # a folder made read-only meanwhile: the file stays
            if _same_file(fd, path):  # never a file that a take-over put in its place
                os.unlink(path)
    finally:
        os.close(fd)  # releases the flock
