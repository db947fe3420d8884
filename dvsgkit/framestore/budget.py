"""What a frame build needs from the machine: memory, checked before it starts, and disk space,
checked after its first samples."""

from __future__ import annotations

import os
from pathlib import Path

from dvsgkit.constants import SENSOR_SIZE
from dvsgkit.errors import InputError
from dvsgkit.fs import require_free

MEMORY_FRACTION = 0.8  # of the available memory a build may plan to take
# Free space wanted for the rest of a build, as a multiple of what its first samples extrapolate
# to: samples differ in event count, and so in compressed size.
SPACE_MARGIN = 1.5
BYTES_PER_COUNT = 8 + 1  # int64 counts from the integration, plus their stored (uint8) copy


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None


def build_memory(T: int, workers: int, block: int) -> int:
    """Bytes a frame build holds at its peak: each worker integrates `block` samples at once as
    int64 counts [block, T, 2, H, W] and casts them to the stored dtype."""
    H, W = SENSOR_SIZE
    return workers * block * T * 2 * H * W * BYTES_PER_COUNT


def check_memory(T: int, workers: int, block: int, available: int | None = None) -> None:
    """ValueError naming -T, what it needs and the largest T that fits, when a build with these
    parameters would not fit in MEMORY_FRACTION of the available memory. Nothing is allocated."""
    available = available_memory() if available is None else available
    if available is None:
        return
    need, budget = build_memory(T, workers, block), int(available * MEMORY_FRACTION)
    if need <= budget:
        return
    fits = budget // build_memory(1, workers, block)
    hint = (
        f"at most -T {fits} fits with --workers {workers}"
        if fits
        else f"not even -T 1 fits with --workers {workers}"
    )
    if workers > 1:
        hint += "; fewer --workers allow a larger T"
    H, W = SENSOR_SIZE
    raise InputError(
        f"-T {T} needs about {need / 2**30:.1f} GiB of memory to build ({workers} workers x "
        f"{block} samples x {T} frames x 2 x {H} x {W} counts x {BYTES_PER_COUNT} bytes), "
        f"{available / 2**30:.1f} GiB is available: {hint}"
    )


class SpaceCheck:
    """After the first block of samples is on disk, extrapolate the build's size from it and
    stop with a StorageError if the file system cannot hold SPACE_MARGIN times the rest.
    (Counts compress 10-100x, so the uncompressed size says nothing useful in advance.)"""

    def __init__(self, folder: Path, total: int, target: Path) -> None:
        self.folder, self.total, self.target = Path(folder), total, Path(target)
        self.done, self.checked = 0, False

    def after_block(self, samples: int) -> None:
        self.done += samples
        if self.checked:
            return
        self.checked = True
        # Workers may still be writing: zarr writes each chunk to `<key>.<uuid>.partial` and
        # renames it, so a listed file can be gone by the time it is measured.
        sizes = [
            size
            for d, _, files in os.walk(self.folder)
            for f in files
            if not f.startswith(".z") and f != "zarr.json" and not f.endswith(".partial")
            if (size := _allocated(Path(d) / f)) is not None
        ]
        if not sizes:
            return
        # Blocks in use, not file sizes: a file system allocates whole blocks (4 KiB on most).
        per_sample = sum(sizes) / len(sizes)
        need = per_sample * max(self.total - len(sizes), 0) * SPACE_MARGIN
        fix = (
            f"free some space or use another --root ({SPACE_MARGIN}x the size of its first "
            f"{len(sizes)} samples, extrapolated to {self.total})"
        )
        require_free(self.target.parent, int(need), self.target, fix)


def _allocated(path: Path) -> int | None:
    """Bytes the file takes on disk; None when it is gone (renamed or removed meanwhile)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    blocks = getattr(st, "st_blocks", None)  # POSIX
    return max(st.st_size, blocks * 512) if blocks is not None else st.st_size
