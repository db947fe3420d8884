"""Atomic file writes: write beside the target under a temporary name, rename when complete."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

# `.{name}.{pid}.partial`: the pid says whose write it is, so a leftover of a dead process can be
# told from a write in progress.
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.partial$")


def temp_name(path: Path) -> Path:
    """The hidden temporary path that this process writes `path` under."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


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


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; a number beyond any pid
        return False
    except PermissionError:  # it exists, but is not ours to signal
        return True
    return True


def remove_dead_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that `atomic_path` writers left in `folder` when they were
    killed mid-write; return them. A file whose writer is still running is left alone (its pid,
    in the name, is alive). Pids are this machine's: run it only where the writers ran."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TEMP_NAME.match(path.name)
        if match is None or not path.is_file() or _alive(int(match["pid"])):
            continue
        path.unlink(missing_ok=True)
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
