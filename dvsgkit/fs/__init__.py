"""The storage core every dvsgkit writer uses: atomic files and folders under one temporary name
scheme, the sweep of what killed writers left, and the free-space checks (the lock is
`dvsgkit.fs.lock`). Nothing half-written ever carries its final name.

A file or folder `NAME` is written as `.NAME.<pid>-<hex>.partial` beside it and renamed into
place when whole; `dvsgkit.errors.storage_errors` turns the OSErrors a user can fix into one line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from dvsgkit.errors import StorageError, storage_errors

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]+\.partial$")


def temp_path(target: Path) -> Path:
    """A fresh hidden temporary name beside `target`, for this process."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.partial")


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target`; renamed onto `target` when the block ends without
    an error, removed otherwise (Ctrl-C included). An OSError names `target`, not the temporary
    (`dvsgkit.errors.storage_errors` turns the ones a user can fix into one line)."""
    target = Path(target)
    tmp = temp_path(target)
    try:
        with _naming(tmp, target):
            yield tmp
            os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):  # never created on a read-only disk, where unlink would fail
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; swapped onto `target` when the block
    ends without an error (`swap_in`), deleted otherwise. Errors as `atomic_file`."""
    target = Path(target)
    with scratch_dir(target) as tmp:
        yield tmp
        with _naming(tmp, target):
            swap_in(tmp, target)


@contextlib.contextmanager
def scratch_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target` (named as `target`'s temporaries, so
    `sweep` clears it after a kill), deleted with what it holds when the block ends."""
    target = Path(target)
    tmp = temp_path(target)
    try:
        with _naming(tmp, target):
            tmp.mkdir()
            yield tmp
    finally:
        remove(tmp)


@contextlib.contextmanager
def _naming(tmp: Path, target: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:  # disk full, read-only, ...: name the file meant, not the temporary
        if exc.filename is None or os.fspath(exc.filename).startswith(os.fspath(tmp)):
            exc.filename = str(target)
        raise


def swap_in(tmp: Path, target: Path) -> None:
    """Rename the finished `tmp` onto `target`. An old `target` is moved aside under a temporary
    name first and deleted after, so a crash in between leaves only what `sweep` clears; when the
    new one cannot be renamed in, the old one goes back under its name."""
    old = None
    if os.path.lexists(target):
        old = temp_path(target)
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        remove(old)


def remove(path: Path) -> None:
    """Delete a file, link or folder if it is there."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def sweep(folder: Path, name: str | None = None) -> list[Path]:
    """Remove the temporary files and folders (of `name` only, if given) that killed writers
    left in `folder`; return them. Call it holding the lock of what is written there: then no
    other writer is at work, and every temporary is a leftover (of this machine or of another
    sharing the folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [
        path
        for path in folder.iterdir()
        if (match := _TEMP.match(path.name)) and name in (None, match["name"])
    ]
    for path in found:
        remove(path)
    return sorted(found)


def write_text(target: str | os.PathLike[str], text: str) -> Path:
    """`Path.write_text` (UTF-8), atomically (see `atomic_file`)."""
    with atomic_file(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_bytes(target: str | os.PathLike[str], data: bytes, *, sync: bool = False) -> Path:
    """`Path.write_bytes`, atomically (see `atomic_file`); with `sync`, fsync'ed before the
    rename, so that even a crash of the machine leaves the previous file or the new one whole."""
    with atomic_file(target) as tmp, open(tmp, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    return Path(target)


def make_folder(folder: Path, fix: str | None = None) -> Path:
    """`folder.mkdir(parents=True, exist_ok=True)`, or a StorageError naming `folder`: a
    read-only or full file system, no permission, a file in the way."""
    folder = Path(folder)
    with storage_errors(folder, "create the folder", fix):
        if os.path.lexists(folder) and not folder.is_dir():  # mkdir would say only "File exists"
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def probe_writable(target: Path, fix: str | None = None) -> None:
    """Create and drop a nameless temporary file beside `target` (O_TMPFILE where the file system
    has it): a StorageError naming `target` when its folder cannot be written, before any work."""
    with storage_errors(target, "create", fix), tempfile.TemporaryFile(dir=Path(target).parent):
        pass


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged process may still write in `folder`'s file system. (Tests replace it
    to simulate a full disk.)"""
    return shutil.disk_usage(folder).free


def require_free(folder: Path, need: int, what: Path, fix: str | None = None) -> None:
    """StorageError (ENOSPC) unless `folder` has `need` bytes free for writing `what`."""
    free = free_bytes(folder)
    if free < need:
        raise StorageError(
            errno.ENOSPC,
            f"not enough free space for {what}: it needs about {need / 1e6:,.1f} MB, {folder} "
            f"has {free / 1e6:,.1f} MB free; {fix or 'free some space'}",
        )


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; a number beyond any pid
        return False
    except PermissionError:  # it exists, but is not ours to signal
        return True
    return True
