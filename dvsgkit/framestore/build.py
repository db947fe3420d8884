"""The Zarr frame store: every sample of events.h5 integrated once into [T, 2, H, W] counts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import dvsgkit
from dvsgkit.constants import BUILD_WORKERS, CLASS_NAMES, NUM_CLASSES, SENSOR_SIZE, SPLITS
from dvsgkit.errors import InputError, storage_errors
from dvsgkit.eventcache.layout import event_cache_path
from dvsgkit.eventcache.read import (
    EventCache,
    EventsIndex,
    SplitIndex,
    check_unchanged,
    file_identity,
    read_events_index,
)
from dvsgkit.frames import FrameSpec, integrate_many
from dvsgkit.framestore import check as verify
from dvsgkit.framestore.budget import SpaceCheck, check_memory
from dvsgkit.framestore.layout import (
    DEFAULT_ZARR_FORMAT,
    LAYOUT,
    LAYOUT_VERSION,
    ZARR_FORMATS,
    frame_store_path,
)
from dvsgkit.framestore.read import store_status, store_zarr_format
from dvsgkit.fs import scratch_dir, swap_in, sweep
from dvsgkit.fs.lock import DEFAULT_LOCK_TIMEOUT, build_lock, lock_of, to_stderr
from dvsgkit.pool import BuildSignals, WorkerPool
from dvsgkit.samples import dataset_dir

# Counts are small and mostly zero: bit-shuffled zstd level 1 packs uint8 frames ~9x (synthetic
# data at the real density) at ~1 ms per 512 KiB sample; levels 5-9 gain 5-15 % for 4-80x the
# encoding time.
BLOSC = {"cname": "zstd", "clevel": 1}
# Widest first fit for the largest count in a split; never clip.
FRAME_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)
BLOCK_SAMPLES = 8  # samples integrated per task: ~8 * 4 MiB of int64 counts in flight per worker
# zarr skips chunks equal to the fill value unless told otherwise; a dvsgkit store writes every
# chunk, so that a missing chunk file always means damage.
WRITE_ALL = {"array.write_empty_chunks": True}  # zarr.config.set(WRITE_ALL) while writing
WRITE_FIX = "free some space, or use another --root"


def _compressor(zarr_format: int) -> Any:
    if zarr_format == 2:
        import numcodecs

        return numcodecs.Blosc(shuffle=numcodecs.Blosc.BITSHUFFLE, **BLOSC)
    from zarr.codecs import BloscCodec

    return BloscCodec(shuffle="bitshuffle", **BLOSC)


@dataclass(frozen=True)
class BlockTask:
    """Samples [s0, s1) of a split, to integrate and write: one worker's job."""

    events_path: Path
    identity: tuple[int, int, int]  # of the events.h5 the index was read from
    split: str
    s0: int
    s1: int
    offsets: np.ndarray  # int64 [s1 - s0 + 1]: the samples' events, absolute in the split
    T: int
    split_by: str
    frames_path: str  # the split's frames array
    dtype: np.dtype


@dataclass(frozen=True)
class BlockResult:
    """What a block came to: its largest count, and each sample's crc32 as written (empty when
    the counts overflow the dtype and nothing was written)."""

    s0: int
    s1: int
    largest: int
    checksums: list[int]


def _integrate_block(task: BlockTask) -> BlockResult:
    """Worker: read samples [s0, s1) from events.h5, integrate, write them when they fit the
    dtype; a block whose counts overflow is not written."""
    offsets = task.offsets
    e0, e1 = int(offsets[0]), int(offsets[-1])
    # "number" needs no t
    fields = ("x", "y", "p", "t") if task.split_by == "time" else ("x", "y", "p")
    with EventCache(task.events_path) as cache:  # damage, pixels off the sensor: one clear line
        # The same file as the index: a cache replaced since (mv, rsync) is never read.
        check_unchanged(task.events_path, task.identity, cache.identity,
                        "the frames were being built")  # fmt: skip
        events = cache.columns(task.split, fields, e0, e1, offsets=offsets, first_sample=task.s0)
    counts = integrate_many(events, offsets, FrameSpec(task.T, task.split_by))  # [S,T,2,H,W]
    largest = int(counts.max()) if counts.size else 0
    if largest > np.iinfo(task.dtype).max:
        return BlockResult(task.s0, task.s1, largest, [])
    frames = counts.astype(task.dtype)
    del counts
    with zarr.config.set(WRITE_ALL):
        zarr.open_array(task.frames_path, mode="r+")[task.s0 : task.s1] = frames
    return BlockResult(task.s0, task.s1, largest, [verify.sample_checksum(f) for f in frames])


def _pick_dtype(largest: int) -> np.dtype:
    return np.dtype(next(d for d in FRAME_DTYPES if largest <= np.iinfo(d).max))


def _write_split(
    group: zarr.Group,
    store_path: Path,
    split: str,
    index: SplitIndex,
    events_path: Path,
    identity: tuple[int, int, int],
    T: int,
    split_by: str,
    zarr_format: int,
    pool: WorkerPool | None,
    after_block: Callable[[int], None],
    check: Callable[[], None],
) -> None:
    offsets, labels = index.offsets, index.labels
    n = labels.shape[0]
    H, W = SENSOR_SIZE
    sub = group.create_group(split)
    one_chunk = {"chunks": (max(n, 1),), "compressors": None}
    sub.create_array("labels", data=labels, **one_chunk)
    dtype = np.dtype(FRAME_DTYPES[0])
    sums = np.zeros(n, np.uint32)  # [N] crc32 of each sample as stored
    while True:  # uint8 first; on an overflow, one more pass in the dtype that fits
        sub.create_array(
            "frames",
            shape=(n, T, 2, H, W),
            chunks=(1, T, 2, H, W),  # one sample per chunk: a random read decodes one sample
            dtype=dtype,
            compressors=_compressor(zarr_format),
            fill_value=0,
            overwrite=True,
        )
        frames_path = str(store_path / split / "frames")
        tasks = [
            BlockTask(events_path, identity, split, s0, min(s0 + BLOCK_SAMPLES, n),
                      offsets[s0 : s0 + BLOCK_SAMPLES + 1], T, split_by, frames_path, dtype)
            for s0 in range(0, n, BLOCK_SAMPLES)
        ]  # fmt: skip
        jobs = [(task,) for task in tasks]
        results = pool.map(jobs, 2 * pool.size, check) if pool else map(_integrate_block, tasks)
        largest = 0
        for block in results:
            largest = max(largest, block.largest)
            sums[block.s0 : block.s1] = block.checksums or 0
            after_block(block.s1 - block.s0)  # an interrupted build stops here, so does a full disk
        if largest <= np.iinfo(dtype).max:
            break
        dtype = _pick_dtype(largest)
    sub.create_array("checksums", data=sums, **one_chunk)
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    sub.attrs.update(
        {
            "num_samples": n,
            "dtype": dtype.name,
            "class_counts": counts.tolist(),
            "max_count": largest,
            "sample_ids": index.sample_ids,  # "{recording stem}:{row in its labels CSV}"
            "checksum": verify.CHECKSUM,  # of each sample, in the checksums array
            "labels_crc32": verify.array_checksum(labels),
            "checksums_crc32": verify.array_checksum(sums),
        }
    )


@dataclass(frozen=True)
class FrameBuild:
    """What make_frame_store did: "built", "rebuilt" (the old store was damaged, or of another
    Zarr format than asked for; `why` says how), "up to date", or "built by another process"
    (it was current once the lock was held)."""

    path: Path
    outcome: str
    why: str = ""


def build_frame_store(
    root: Path,
    spec: FrameSpec,
    *,
    workers: int = BUILD_WORKERS,
    progress: bool = True,
    zarr_format: int | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> Path:
    """Write ROOT/frames_number_{T}_split_by_{split_by}.zarr from ROOT/events.h5 (built first
    when missing). A complete, intact store made from the same event cache is left as is; a
    damaged one is rebuilt, saying what was wrong on stderr first."""
    return make_frame_store(
        root, spec, workers=workers, progress=progress, zarr_format=zarr_format,
        lock_timeout=lock_timeout,
    ).path  # fmt: skip


def make_frame_store(
    root: Path,
    spec: FrameSpec,
    *,
    workers: int = BUILD_WORKERS,
    progress: bool = True,
    zarr_format: int | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    check_samples: bool = False,
    notify: Callable[[str], None] = to_stderr,
) -> FrameBuild:
    """build_frame_store, saying what it did. `zarr_format` None keeps an existing store's
    format (new stores: DEFAULT_ZARR_FORMAT); a store in another format than the one given is
    rebuilt. With `check_samples`, a store that would be up to date has every sample decoded and
    compared with its checksum (what `dvsgkit info --verify` does: seconds for the full
    dataset); without, its structure only is checked (milliseconds). Before rebuilding a
    damaged store (or one of another format) it passes one line saying why to `notify`. A
    second build of the same store waits for the first (at most `lock_timeout` seconds, naming
    its pid); StoreWriteError: full disk, read-only file system or no permission, with nothing
    partial left."""
    T, split_by = spec.T, spec.split_by
    if zarr_format is not None and zarr_format not in ZARR_FORMATS:
        raise InputError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    check_memory(T, workers, BLOCK_SAMPLES)
    root = Path(root)
    target = frame_store_path(root, spec)
    events_path = event_cache_path(root)
    if not events_path.exists() or dataset_dir(root).is_dir():
        # Missing: build it. Recordings present: let the event pipeline refresh a stale cache
        # (a no-op that compares file stats when current), so changed inputs reach the frames.
        from dvsgkit.eventcache.build import build_event_cache

        build_event_cache(root, workers=workers, progress=progress, lock_timeout=lock_timeout)
    # Layout, seals, offsets, labels, checksum and the file's identity, from one open file.
    index = read_events_index(events_path)
    # Held open until the build ends, so that the file keeps its inode number (on FUSE too).
    pin = os.open(events_path, os.O_RDONLY)
    try:
        check_unchanged(events_path, index.identity, file_identity(os.fstat(pin)),
                        "its index was read")  # fmt: skip
        return _make(root, target, events_path, index, T, split_by, workers, progress,
                     zarr_format, lock_timeout, check_samples, notify)  # fmt: skip
    finally:
        os.close(pin)


def _make(
    root: Path,
    target: Path,
    events_path: Path,
    index: EventsIndex,
    T: int,
    split_by: str,
    workers: int,
    progress: bool,
    zarr_format: int | None,
    lock_timeout: float,
    check_samples: bool,
    notify: Callable[[str], None],
) -> FrameBuild:
    """make_frame_store once the event cache's index is read."""

    def status() -> tuple[str, str]:
        return store_status(target, T, split_by, index.checksum, zarr_format=zarr_format,
                            samples=check_samples)  # fmt: skip

    found, why = status()
    if found == "current":
        return FrameBuild(target, "up to date")
    with (
        storage_errors(target, "write the frame store", WRITE_FIX),
        build_lock(lock_of(target), timeout=lock_timeout, what=str(target), notify=to_stderr),
    ):
        # Another build may have finished while this one waited for the lock.
        found, why = status()
        if found == "current":
            return FrameBuild(target, "built by another process")
        if found == "damaged":
            notify(f"{target} is damaged: {why}; rebuilding it")
        elif found == "format":
            notify(f"{target} is {why}; rebuilding it")
        fmt = zarr_format or store_zarr_format(target) or DEFAULT_ZARR_FORMAT
        sweep(root, target.name)  # what killed builds of this store left
        with scratch_dir(target) as tmp:
            try:
                with BuildSignals() as signals:  # Ctrl-C / kill: stop at the next block, clean up
                    _write_store(tmp, target, index, events_path, T, split_by, workers,
                                 progress, fmt, signals.check)  # fmt: skip
                    signals.check()
                # The workers checked that they read the file of the index; a write in place, or
                # a replacement after the last of them, shows here.
                check_unchanged(events_path, index.identity, file_identity(os.stat(events_path)),
                                "the frames were being built")  # fmt: skip
                swap_in(tmp, target)  # an old store is moved aside, then deleted
            except BaseException:
                with contextlib.suppress(Exception):  # this build's error is the one to report
                    _wait_for_zarr_writes()  # those would recreate folders in `tmp` once removed
                raise
    return FrameBuild(target, "rebuilt" if found in ("damaged", "format") else "built", why)


def _wait_for_zarr_writes() -> None:
    """Wait until zarr's IO thread has no write left in flight. zarr-python 3 writes the chunks
    of one assignment, and the metadata files of one array or group, concurrently, and raises at
    the first that fails (a full disk) while the others go on in its IO thread."""
    from zarr.core.sync import sync  # runs a coroutine on that thread's event loop

    async def the_others() -> None:
        while others := asyncio.all_tasks() - {asyncio.current_task()}:
            await asyncio.wait(others)

    sync(the_others())


def _write_store(
    tmp: Path,
    target: Path,
    index: EventsIndex,
    events_path: Path,
    T: int,
    split_by: str,
    workers: int,
    progress: bool,
    zarr_format: int,
    check: Callable[[], None],
) -> None:
    from tqdm.auto import tqdm

    group = zarr.open_group(tmp, mode="w", zarr_format=zarr_format)
    group.attrs.update(
        {
            "layout": LAYOUT,
            "layout_version": LAYOUT_VERSION,
            "dvsgkit_version": dvsgkit.__version__,
            "T": T,
            "split_by": split_by,
            "class_names": list(CLASS_NAMES),
            "sensor_size": list(SENSOR_SIZE),
            "splits": list(SPLITS),
            "frame_axes": ["sample", "time", "polarity", "y", "x"],
            "events": {
                "file": events_path.name,
                "checksum": index.checksum,
                "layout_version": index.attrs.get("layout_version"),
                "dvsgkit_version": index.attrs.get("dvsgkit_version"),
            },
            "build_id": uuid.uuid4().hex,
            "complete": False,  # set True last: a store without it never counts as built
        }
    )
    total = sum(s.labels.shape[0] for s in index.splits.values())
    space = SpaceCheck(tmp, total, target)
    pool = WorkerPool(_integrate_block, workers) if workers > 1 else None  # before any thread
    desc = tmp.name[1:].split(".zarr")[0]
    with pool or contextlib.nullcontext(), tqdm(total=total, unit="sample", desc=desc,
                                                 disable=not progress) as bar:  # fmt: skip

        def after_block(samples: int) -> None:
            check()
            bar.update(samples)
            space.after_block(samples)

        for split in SPLITS:
            with zarr.config.set(WRITE_ALL):  # an all-zero labels chunk is written too
                _write_split(group, tmp, split, index.splits[split], events_path,
                             index.identity, T, split_by, zarr_format, pool,
                             after_block, check)  # fmt: skip
    group.attrs["complete"] = True
