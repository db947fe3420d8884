"""Spools: memory-mapped slots in which worker processes hand samples to the writer."""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dvsgkit.pool import forks

Slot = int | Path  # a spool: a memfd inherited by the workers, or a file


class Spools:
    """Spools, memory-mapped: how a worker hands a recording's samples to the writer without
    pickling them through a pipe. A recording's n events lie in a slot as columns back to
    back, in the order of `dtypes` ({"t": int64, ...}). Maps stay open from one recording to the
    next and slots only grow, so that pages are faulted in once per process, not once per
    recording."""

    def __init__(self, dtypes: dict[str, np.dtype], writable: bool) -> None:
        self.dtypes = dtypes
        self.writable = writable
        self.maps: dict[Slot, np.ndarray] = {}

    def columns(self, slot: Slot, n: int) -> dict[str, np.ndarray]:
        sizes = [n * dtype.itemsize for dtype in self.dtypes.values()]
        if n == 0:
            return {name: np.empty(0, dtype) for name, dtype in self.dtypes.items()}
        buf = self.maps.get(slot)
        if buf is None or len(buf) < sum(sizes):
            self.maps.pop(slot, None)
            buf = self.maps[slot] = self._map(slot, sum(sizes))
        starts = np.cumsum([0, *sizes])  # widest first: every column stays aligned to its items
        return {
            name: buf[starts[k] : starts[k + 1]].view(dtype)
            for k, (name, dtype) in enumerate(self.dtypes.items())
        }

    def _map(self, slot: Slot, need: int) -> np.ndarray:
        if isinstance(slot, int):
            fd = slot
        else:
            fd = os.open(slot, (os.O_RDWR | os.O_CREAT) if self.writable else os.O_RDONLY, 0o600)
        try:
            if self.writable and os.fstat(fd).st_size < need:
                # Grow, never shrink: other processes' maps of it stay valid.
                _grow(fd, need + need // 4, on_disk=not isinstance(slot, int))  # room to grow
            access = mmap.ACCESS_WRITE if self.writable else mmap.ACCESS_READ
            return np.frombuffer(mmap.mmap(fd, os.fstat(fd).st_size, access=access), np.uint8)
        finally:
            if not isinstance(slot, int):
                os.close(fd)

    def close(self) -> None:
        self.maps.clear()


def _grow(fd: int, size: int, on_disk: bool) -> None:
    """Grow a slot to `size` bytes. A file's blocks are reserved: a page of a sparse file that
    the disk cannot back when it is first touched kills the process with SIGBUS, where
    posix_fallocate fails with an OSError (ENOSPC) that the build reports."""
    if on_disk and hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)
    else:
        os.ftruncate(fd, size)


def memfds() -> bool:
    """Whether slots can be anonymous memory files: on Linux, for workers that are forked and
    so inherit them (not spawned: `dvsgkit.pool.forks`)."""
    return sys.platform == "linux" and hasattr(os, "memfd_create") and forks()


@contextlib.contextmanager
def make_slots(count: int, folder: Path) -> Iterator[list[Slot]]:
    """`count` spools for a pool's hand-over, made before the pool forks its workers: anonymous
    memory files (Linux, where the forked workers inherit them; no disk writes), closed when the
    block ends, or files in the empty `folder`, which the caller removes."""
    if not memfds():
        yield [folder / f"{k}.bin" for k in range(count)]
        return
    fds = [os.memfd_create(f"dvsgkit-spool-{k}", os.MFD_CLOEXEC) for k in range(count)]
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)
