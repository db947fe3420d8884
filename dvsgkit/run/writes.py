"""Writes into a run directory that fail (a full disk, a read-only mount): no torn line is left,
and the error is one line naming the file, the cause and the checkpoint to resume from."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RunWriteError(OSError):
    """A file of the run directory could not be written (disk full, read-only, ...). The message
    names the file, the cause and what is left; the previous checkpoint, if any, is intact."""


def append_line(path: Path, line: str) -> None:
    """Append one line; on a failed write (a full disk) cut the file back to where it was, so no
    torn line is left behind."""
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
    except OSError as exc:
        if path.exists() and path.stat().st_size > size:
            os.truncate(path, size)
        exc.filename = exc.filename or str(path)
        raise


@contextmanager
def run_writes(run_dir: Path, resume_from: Path | None) -> Iterator[None]:
    """Turn an OSError while writing into `run_dir` into a RunWriteError: one line naming the
    file and the cause, and the checkpoint to resume from (`resume_from`, when one exists)."""
    try:
        yield
    except RunWriteError:
        raise
    except OSError as exc:
        if exc.errno is None:  # no failed write (a run lock held by another process, say)
            raise
        where = exc.filename or run_dir
        cause = exc.strerror or str(exc) or type(exc).__name__
        fix = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
        if resume_from is not None and resume_from.is_file():
            left = f"{resume_from} is intact: {fix}, then rerun with --resume {resume_from}"
        else:
            left = f"no epoch was saved: {fix} or choose another --out-dir"
        error = RunWriteError(f"cannot write {where}: {cause}; {left}")
        error.errno = exc.errno
        raise error from exc
