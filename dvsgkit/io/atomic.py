"""Atomic writes: build a file or folder beside the target under a temporary name, swap it in
when complete; sweep away what killed writers left."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

# `.{name}.{pid}.partial` (a file) or `.{name}.{pid}-{hex}.partial` (a folder: one process may
# build the same folder twice, or hold an old one aside while the new one moves in). The pid says
# whose it is, so a leftover of a dead process can be told from work in progress.
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(?:-[0-9a-f]+)?\.partial$")


def temp_name(path: Path) -> Path:
    """The hidden temporary path that this process writes the file `path` under."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def temp_dir_name(path: Path) -> Path:
    """A fresh hidden temporary name beside `path` for a folder of this process."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.partial")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a hidden temporary path beside `path` (unique per process); when the block ends
    without an error it is renamed onto `path`, otherwise removed. A reader never sees a
    half-written file under the real name, and a failed write leaves the old file intact.
    A process killed inside the block (kill -9, power loss) leaves the temporary file:
    `remove_dead_temps` clears such leftovers."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:  # disk full, read-only, ...: name the file meant, not the temp
        if exc.filename is None or os.fspath(exc.filename) == os.fspath(tmp):
            exc.filename = str(path)
        raise
    finally:
        if os.path.lexists(tmp):  # never created on a read-only disk, where unlink would fail
            tmp.unlink()


def make_temp_dir(path: str | os.PathLike[str]) -> Path:
    """Create and return an empty folder beside `path` under a fresh temporary name, to be built
    and then moved in with `swap_in` (or deleted with `remove_tree`)."""
    while True:
        tmp = temp_dir_name(Path(path))
        try:
            tmp.mkdir()
        except FileExistsError:  # the same random part twice: draw again
            continue
        return tmp


def swap_in(tmp: Path, target: Path) -> None:
    """Rename the finished `tmp` onto `target`. An old `target` (folder, file or link) is moved
    aside under a temporary name first and deleted after: a crash in between leaves only what
    `remove_dead_temps` clears, never half of the old and half of the new. When the new one
    cannot be renamed in, the old one goes back under its name before the error is raised."""
    old = None
    if os.path.lexists(target):
        old = temp_dir_name(target)
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        remove_tree(old)


def remove_tree(path: Path) -> None:
    """Delete a temporary folder (or file, or link)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; when the block ends without an error it is
    swapped onto `path` (see `swap_in`), otherwise deleted, on Ctrl-C too. A killed process
    leaves the temporary folder: `remove_dead_temps` clears it."""
    path = Path(path)
    tmp = make_temp_dir(path)
    try:
        yield tmp
        swap_in(tmp, path)
    finally:
        remove_tree(tmp)  # gone already after the swap


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; a number beyond any pid
        return False
    except PermissionError:  # it exists, but is not ours to signal
        return True
    return True


def remove_dead_temps(folder: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Delete the temporary files and folders (of `name` only, if given) that writers killed
    mid-write left in `folder`; return them. One whose writer is still running is left alone
    (its pid, in the name, is alive). Pids are this machine's: run it only where the writers
    ran."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TEMP_NAME.match(path.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        if pid_alive(int(match["pid"])):
            continue
        remove_tree(path)
        removed.append(path)
    return sorted(removed)


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """`Path.write_text`, atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """`Path.write_bytes`, atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
