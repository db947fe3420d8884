"""What a frame build needs from the machine: memory, checked before it starts, and disk space,
checked after its first samples."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dvsgkit.constants import SENSOR_SIZE
from dvsgkit.errors import InputError
from dvsgkit.frames import FrameSpec, format_us
from dvsgkit.fs import require_free

MEMORY_FRACTION = 0.8  # of the available memory a build may plan to take
# Free space wanted for the rest of a build, as a multiple of what its first samples extrapolate
# to: samples differ in event count, and so in compressed size.
SPACE_MARGIN = 1.5
BYTES_PER_COUNT = 8 + 1  # int64 counts from the integration, plus their stored (uint8) copy
RAGGED_GUESS = 16  # frames per sample assumed for a custom integrator's memory


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


def build_memory(
    T: int, workers: int, block: int, frame_size: tuple[int, int] = SENSOR_SIZE
) -> int:
    """Bytes a frame build holds at its peak: each worker integrates `block` samples at once as
    int64 counts [block, T, 2, H, W] and casts them to the stored dtype."""
    H, W = frame_size
    return workers * block * T * 2 * H * W * BYTES_PER_COUNT


def check_memory(
    T: int,
    workers: int,
    block: int,
    frame_size: tuple[int, int] = SENSOR_SIZE,
    available: int | None = None,
) -> None:
    """InputError naming -T, what it needs and the largest T that fits, when a build with these
    parameters would not fit in MEMORY_FRACTION of the available memory. Nothing is allocated."""
    available = available_memory() if available is None else available
    if available is None:
        return
    need = build_memory(T, workers, block, frame_size)
    budget = int(available * MEMORY_FRACTION)
    if need <= budget:
        return
    fits = budget // build_memory(1, workers, block, frame_size)
    hint = (
        f"at most -T {fits} fits with --workers {workers}"
        if fits
        else f"not even -T 1 fits with --workers {workers}"
    )
    if workers > 1:
        hint += "; fewer --workers allow a larger T"
    H, W = frame_size
    raise InputError(
        f"-T {T} needs about {need / 2**30:.1f} GiB of memory to build ({workers} workers x "
        f"{block} samples x {T} frames x 2 x {H} x {W} counts x {BYTES_PER_COUNT} bytes), "
        f"{available / 2**30:.1f} GiB is available: {hint}"
    )


class SpaceCheck:
    """After the first block of samples is on disk, extrapolate the build's size from it and
    stop with a StorageError if the file system cannot hold SPACE_MARGIN times the rest.
    (Counts compress 10-100x, so the uncompressed size says nothing useful in advance.)"""

    def __init__(self, folder: Path, total: int, target: Path, per_file: bool = True) -> None:
        self.folder, self.total, self.target = Path(folder), total, Path(target)
        self.done, self.checked = 0, False
        self.per_file = per_file  # one file per sample (else: the samples done are on disk)

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
        measured = len(sizes) if self.per_file else self.done
        per_sample = sum(sizes) / measured
        need = per_sample * max(self.total - measured, 0) * SPACE_MARGIN
        fix = (
            f"free some space or use another --root ({SPACE_MARGIN}x the size of its first "
            f"{measured} samples, extrapolated to {self.total})"
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


def frames_per_sample(events: Path, index: Any, spec: FrameSpec) -> int:
    """The most frames a sample of `spec` can have (for the memory of a build): T, or for a
    duration or bins without T the longest sample's span over the width (a custom integrator:
    RAGGED_GUESS). A duration or bin longer than every sample is refused, naming the option
    and the longest sample."""
    if spec.mode not in ("duration", "bin"):
        return spec.T or RAGGED_GUESS
    from dvsgkit.eventcache.read import EventCache

    width = spec.duration_us if spec.mode == "duration" else spec.bin_us
    with EventCache(events) as cache:
        spans = {split: cache.spans(split) for split in index.splits}
    split, i = max(((s, int(v.argmax())) for s, v in spans.items() if v.size),
                   key=lambda si: spans[si[0]][si[1]], default=(None, 0))  # fmt: skip
    longest = int(spans[split][i]) if split else 0
    if width > longest:
        option = "--duration" if spec.mode == "duration" else "--bin"
        where = f"{split} sample {i} ({index.splits[split].sample_ids[i]})" if split else "none"
        raise InputError(
            f"{option} {format_us(width)} is longer than every sample: the longest, {where}, "
            f"spans {longest / 1e6:g} s; give a shorter {option} (each sample would be one frame)"
        )
    return spec.T or longest // width + 1
