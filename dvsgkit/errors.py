"""dvsgkit's errors: one base, DvsgkitError, whose message is one line naming what is wrong,
where (the file, byte offset, row or option) and the fix.

The command line turns a DvsgkitError into that line and exit status 1, in one place
(`dvsgkit_cli.main`). Each kind below also derives from the built-in type a Python caller would
catch (ValueError, FileNotFoundError, OSError, ...). `storage_errors` is the one place where an
OSError a user can act on (a full disk, a read-only mount) becomes such a line.
"""

from __future__ import annotations

import contextlib
import errno
import re
from collections.abc import Iterator
from pathlib import Path


class DvsgkitError(Exception):
    """Base of every dvsgkit exception: str() is one line naming what, where and the fix."""


class InputError(DvsgkitError, ValueError):
    """A value, file or checkpoint dvsgkit cannot use as given."""


class NotFound(DvsgkitError, FileNotFoundError):
    """A file or folder that must exist does not."""


class InTheWay(DvsgkitError, FileExistsError):
    """Something dvsgkit would write over is not its own (or not what it expects)."""


class DamagedError(InputError):
    """A file dvsgkit wrote no longer matches its own record (checksums, seals, structure)."""


class StorageError(DvsgkitError, OSError):
    """A write failed or would fail for a reason the user can fix: no space, a read-only mount,
    no permission. Nothing partial is left behind."""

    def __str__(self) -> str:  # the line alone, without OSError's "[Errno 28] "
        return str(self.strerror) if self.strerror is not None else super().__str__()


class LockTimeout(DvsgkitError, TimeoutError):
    """Another process held a lock longer than the caller would wait."""


class Stopped(DvsgkitError, RuntimeError):
    """Work stopped because another process of the job failed or died (a worker, a rank)."""


# The OS errors a user can act on, once for every writer: errno -> (cause, remedy).
CAUSES = {
    errno.ENOSPC: ("no space left on device", "free some space"),
    errno.EDQUOT: ("disk quota exceeded", "free some space"),
    errno.EROFS: ("read-only file system", "make it writable"),
    errno.EACCES: ("permission denied", "make it writable"),
    errno.EPERM: ("operation not permitted", "make it writable"),
    errno.ENOTDIR: ("part of the path is a file, not a folder", "move the file away"),
}
# The fix for an output a command cannot write into its --out-dir (whatever the cause).
OUT_DIR_FIX = "give another --out-dir, or free some space"
_HDF5_ERRNO = re.compile(r"errno = (\d+)")  # HDF5 reports the OS error inside its message


def cause_of(exc: OSError) -> int | None:
    """The errno of CAUSES behind `exc` (h5py's OSErrors carry it in their text), else None."""
    code = exc.errno
    if code not in CAUSES:
        found = _HDF5_ERRNO.search(str(exc))
        code = int(found.group(1)) if found else None
    return code if code in CAUSES else None


@contextlib.contextmanager
def storage_errors(
    path: Path | str | None, doing: str = "write", fix: str | None = None
) -> Iterator[None]:
    """Turn an OSError of CAUSES raised in the block into one StorageError line, "cannot {doing}
    {path}: {cause}; {fix}" (`path` None: the file the error names; `fix` defaults to the
    cause's remedy, which "{remedy}" in `fix` stands for); DvsgkitErrors and other errors
    propagate as they are."""
    try:
        yield
    except DvsgkitError:
        raise
    except OSError as exc:
        code = cause_of(exc)
        if code is None:
            raise
        cause, remedy = CAUSES[code]
        fix = (fix or "{remedy}").replace("{remedy}", remedy)
        raise StorageError(code, f"cannot {doing} {path or exc.filename}: {cause}; {fix}") from exc
