"""Disk space and read-only mounts during a store build: refused before the library writes.

HDF5 does not survive a full disk: once a write fails with ENOSPC, its chunk cache and metadata
flushes fail again while objects are released (errors Python can only print), and closing the
file can crash the process (a segmentation fault, after hundreds of lines). So a build checks
free space before it starts, from an estimate of what it will write, and again before each
write, from the exact worst case of that write; a write error that still happens (another
program filling the disk in between) is reported as a StorageError naming the path and cause.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# The causes a user can act on, by errno: free space, or write somewhere else.
CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "part of the path is a file, not a folder",
}
_HDF5_ERRNO = re.compile(r"errno = (\d+)")  # HDF5 reports the OS error inside its message


class StorageError(OSError):
    """A build cannot write where it must: no space left, a read-only mount, no permission.
    The message names the path, the cause and the fix; nothing partial is left behind."""

    def __str__(self) -> str:
        return str(self.strerror)  # the message alone, without OSError's "[Errno 28] "


def cause_of(exc: OSError) -> int | None:
    """The errno of CAUSES behind `exc` (h5py's OSErrors carry it in the text), else None."""
    code = exc.errno
    if code not in CAUSES:
        found = _HDF5_ERRNO.search(str(exc))
        code = int(found.group(1)) if found else None
    return code if code in CAUSES else None


@contextlib.contextmanager
def storage_errors(path: Path, doing: str, fix: str) -> Iterator[None]:
    """Turn an OSError of CAUSES raised in the block into one StorageError line, "cannot {doing}
    {path}: {cause}; {fix}"; other errors (and StorageErrors) propagate as they are."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        code = cause_of(exc)
        if code is None:
            raise
        raise StorageError(code, f"cannot {doing} {path}: {CAUSES[code]}; {fix}") from exc


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged process may still write in `folder`'s file system."""
    return shutil.disk_usage(folder).free


def require_free(folder: Path, need: int, what: Path, fix: str) -> None:
    """StorageError (ENOSPC) unless `folder` has `need` bytes free for writing `what`."""
    free = free_bytes(folder)
    if free < need:
        raise StorageError(
            errno.ENOSPC,
            f"not enough free space for {what}: it needs about {_mb(need)}, {folder} has "
            f"{_mb(free)} free; {fix}",
        )


def probe_writable(path: Path, fix: str) -> None:
    """Create and drop a temporary file in `path`'s folder: StorageError naming `path` when the
    folder cannot be written (read-only mount, permissions), before any work. Where the file
    system has O_TMPFILE (Linux local disks) the file has no name, so not even a killed process
    leaves it behind."""
    with storage_errors(path, "create", fix), tempfile.TemporaryFile(dir=path.parent):
        pass


def make_folder(folder: Path, fix: str) -> Path:
    """`folder.mkdir(parents=True, exist_ok=True)`, or a StorageError naming `folder` when it
    cannot be made: a read-only or full file system, no permission, a file in the way."""
    folder = Path(folder)
    with storage_errors(folder, "create the folder", fix):
        if os.path.lexists(folder) and not folder.is_dir():  # mkdir would say only "File exists"
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"
