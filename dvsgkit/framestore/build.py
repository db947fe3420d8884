"""Building a frame store: every sample of events.h5 integrated once into [T, 2, H, W] counts by
worker processes, written under a temporary name and swapped in whole."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import dvsgkit
from dvsgkit.constants import BUILD_WORKERS, CLASS_NAMES, NUM_CLASSES, SENSOR_SIZE, SPLITS
from dvsgkit.errors import InputError, storage_errors
from dvsgkit.eventcache import read as cache_read
from dvsgkit.eventcache.layout import event_cache_path
from dvsgkit.eventcache.read import EventCache, EventsIndex, SplitIndex
from dvsgkit.frames import FrameSpec, integrate_many
from dvsgkit.framestore import layout
from dvsgkit.framestore.budget import SpaceCheck, check_memory
from dvsgkit.framestore.check import array_checksum, sample_checksum, status
from dvsgkit.framestore.layout import frame_store_path, zarr_format_of
from dvsgkit.fs import scratch_dir, swap_in, sweep
from dvsgkit.fs.lock import DEFAULT_LOCK_TIMEOUT, build_lock, lock_of, to_stderr
from dvsgkit.pool import BuildSignals, WorkerPool
from dvsgkit.samples import dataset_dir

# Counts are small and mostly zero: bit-shuffled zstd level 1 packs uint8 frames ~9x (synthetic
# data at the real density) at ~1 ms per 512 KiB sample; levels 5-9 gain 5-15 % for 4-80x the
# encoding time.
BLOSC = {"cname": "zstd", "clevel": 1}
FRAME_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)  # the narrowest that fits; never clip
BLOCK_SAMPLES = 8  # samples integrated per task: ~8 * 4 MiB of int64 counts in flight per worker
# zarr skips chunks equal to the fill value unless told otherwise; a dvsgkit store writes every
# chunk, so that a missing chunk file always means damage.
WRITE_ALL = {"array.write_empty_chunks": True}  # zarr.config.set(WRITE_ALL) while writing
WRITE_FIX = "free some space, or use another --root"
BUILDING = "the frames were being built"  # when the event cache was replaced


class FrameBuild(type(Path())):  # type: ignore[misc]
    """The store's path, as build_frame_store returns it, saying what the build did: `outcome`
    "built", "rebuilt" (the old store was damaged, or of another Zarr format than asked for;
    `why` says how), "up to date" or "built by another process" (current once the lock was held)."""

    outcome = ""
    why = ""


@dataclass(frozen=True)
class BuildContext:
    """What every block of one build shares: the frames wanted, the event cache (and the
    identity of the file its index was read from), and the store being written."""

    spec: FrameSpec
    events: Path
    identity: tuple[int, int, int]
    store: Path  # the temporary folder


@dataclass(frozen=True)
class BlockTask:
    """Samples [s0, s0 + len(offsets) - 1) of a split, to integrate and write: one worker's job."""

    build: BuildContext
    split: str
    s0: int
    offsets: np.ndarray  # int64 [samples + 1]: their events, absolute in the split
    dtype: np.dtype


@dataclass(frozen=True)
class BlockResult:
    """A block's largest count, and each sample's crc32 as written (empty when the counts
    overflow the dtype and nothing was written)."""

    s0: int
    s1: int
    largest: int
    checksums: list[int]


def _integrate_block(task: BlockTask) -> BlockResult:
    """Worker: read the block's samples from events.h5, integrate them, write them when they fit
    the dtype."""
    build, offsets = task.build, task.offsets
    s1 = task.s0 + len(offsets) - 1
    fields = ("x", "y", "p", "t") if build.spec.split_by == "time" else ("x", "y", "p")
    with EventCache(build.events) as cache:  # damage, pixels off the sensor: one clear line
        # The same file as the index: a cache replaced since (mv, rsync) is never read.
        cache_read.check_unchanged(build.events, build.identity, cache.identity, BUILDING)
        columns = cache.columns(task.split, fields, int(offsets[0]), int(offsets[-1]),
                                offsets=offsets, first_sample=task.s0)  # fmt: skip
    counts = integrate_many(columns, offsets, build.spec)  # [S, T, 2, H, W] int64
    largest = int(counts.max()) if counts.size else 0
    if largest > np.iinfo(task.dtype).max:
        return BlockResult(task.s0, s1, largest, [])
    frames = counts.astype(task.dtype)
    del counts
    with zarr.config.set(WRITE_ALL):
        zarr.open_array(build.store / task.split / "frames", mode="r+")[task.s0 : s1] = frames
    return BlockResult(task.s0, s1, largest, [sample_checksum(f) for f in frames])


def _compressor(zarr_format: int) -> Any:
    if zarr_format == 2:
        import numcodecs

        return numcodecs.Blosc(shuffle=numcodecs.Blosc.BITSHUFFLE, **BLOSC)
    from zarr.codecs import BloscCodec

    return BloscCodec(shuffle="bitshuffle", **BLOSC)


Run = Callable[[list[BlockTask]], Iterable[BlockResult]]  # block results, in task order


def _write_split(
    group: zarr.Group, build: BuildContext, split: str, index: SplitIndex, run: Run,
    after_block: Callable[[int], None],
) -> None:  # fmt: skip
    labels, n = index.labels, index.labels.shape[0]
    sub = group.create_group(split)
    one_chunk = {"chunks": (max(n, 1),), "compressors": None}
    sub.create_array("labels", data=labels, **one_chunk)
    shape = (build.spec.T, 2, *SENSOR_SIZE)
    dtype, sums = np.dtype(FRAME_DTYPES[0]), np.zeros(n, np.uint32)  # [N] crc32 of each sample
    while True:  # uint8 first; on an overflow, one more pass in the dtype that fits
        sub.create_array("frames", shape=(n, *shape), dtype=dtype, fill_value=0, overwrite=True,
                         chunks=(1, *shape),  # one sample per chunk: a read decodes one sample
                         compressors=_compressor(group.metadata.zarr_format))  # fmt: skip
        tasks = [BlockTask(build, split, s0, index.offsets[s0 : s0 + BLOCK_SAMPLES + 1], dtype)
                 for s0 in range(0, n, BLOCK_SAMPLES)]  # fmt: skip
        largest = 0
        for block in run(tasks):
            largest = max(largest, block.largest)
            sums[block.s0 : block.s1] = block.checksums or 0
            after_block(block.s1 - block.s0)  # an interrupted build stops here, so does a full disk
        if largest <= np.iinfo(dtype).max:
            break
        dtype = np.dtype(next(d for d in FRAME_DTYPES if largest <= np.iinfo(d).max))
    sub.create_array("checksums", data=sums, **one_chunk)
    sub.attrs.update(
        num_samples=n,
        dtype=dtype.name,
        class_counts=np.bincount(labels, minlength=NUM_CLASSES).tolist(),
        max_count=largest,
        sample_ids=index.sample_ids,  # "{recording stem}:{row in its labels CSV}"
        checksum=layout.CHECKSUM,  # of each sample, in the checksums array
        labels_crc32=array_checksum(labels),
        checksums_crc32=array_checksum(sums),
    )


def _write_store(build: BuildContext, target: Path, index: EventsIndex, workers: int,
                 progress: bool, zarr_format: int) -> None:  # fmt: skip
    """Write the whole store into `build.store`; Ctrl-C or a kill stops it at the next block."""
    from tqdm.auto import tqdm

    group = zarr.open_group(build.store, mode="w", zarr_format=zarr_format)
    group.attrs.update(
        {
            "layout": layout.LAYOUT,
            "layout_version": layout.LAYOUT_VERSION,
            "dvsgkit_version": dvsgkit.__version__,
            **build.spec.to_dict(),  # T, split_by, ...: what the frames are
            "class_names": list(CLASS_NAMES),
            "sensor_size": list(SENSOR_SIZE),
            "splits": list(SPLITS),
            "frame_axes": ["sample", "time", "polarity", "y", "x"],
            "events": {
                "file": build.events.name,
                "checksum": index.checksum,
                "layout_version": index.attrs.get("layout_version"),
                "dvsgkit_version": index.attrs.get("dvsgkit_version"),
            },
            "build_id": uuid.uuid4().hex,
            "complete": False,  # set True last: a store without it never counts as built
        }
    )
    total = sum(s.labels.shape[0] for s in index.splits.values())
    space = SpaceCheck(build.store, total, target)
    with (
        BuildSignals() as signals,
        WorkerPool(_integrate_block, workers) if workers > 1 else contextlib.nullcontext() as pool,
        tqdm(total=total, unit="sample", desc=target.stem, disable=not progress) as bar,
    ):  # the pool first: its workers fork before tqdm starts a thread

        def run(tasks: list[BlockTask]) -> Iterator[BlockResult]:
            if pool is None:
                return map(_integrate_block, tasks)
            return pool.map([(task,) for task in tasks], 2 * pool.size, signals.check)

        def after_block(samples: int) -> None:
            signals.check()
            bar.update(samples)
            space.after_block(samples)

        try:
            for split in SPLITS:
                with zarr.config.set(WRITE_ALL):  # an all-zero labels chunk is written too
                    _write_split(group, build, split, index.splits[split], run, after_block)
            signals.check()
            group.attrs["complete"] = True
        except BaseException:
            with contextlib.suppress(Exception):  # this build's error is the one to report
                _wait_for_zarr_writes()  # those would recreate folders once the build removed them
            raise


def _wait_for_zarr_writes() -> None:
    """Wait until zarr's IO thread has no write left in flight. zarr-python 3 writes the chunks
    of one assignment, and the metadata files of one array or group, concurrently, and raises at
    the first that fails (a full disk) while the others go on in its IO thread."""
    from zarr.core.sync import sync  # runs a coroutine on that thread's event loop

    async def the_others() -> None:
        while others := asyncio.all_tasks() - {asyncio.current_task()}:
            await asyncio.wait(others)

    sync(the_others())


def build_frame_store(
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
    """Write ROOT/{spec.name}.zarr from ROOT/events.h5 (built, or refreshed while the recordings
    are there, first) and return its path, saying what was done (FrameBuild). A complete store
    built from the same cache is left as it is once `status` finds it sound (its structure:
    milliseconds; with `check_samples`, every sample: seconds). A damaged one, or one in another
    Zarr format than `zarr_format` asks for (None: an existing store's, else
    DEFAULT_ZARR_FORMAT), is rebuilt after one line saying why goes to `notify`. Written under a
    temporary name and swapped in whole: an error, Ctrl-C or a kill leaves no half store. A
    second build of the store waits for the first (at most `lock_timeout` s, saying so through
    `notify`). StorageError: a full disk, a read-only file system, no permission."""
    if zarr_format is not None and zarr_format not in layout.ZARR_FORMATS:
        raise InputError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    check_memory(spec.T, workers, BLOCK_SAMPLES)
    root = Path(root)
    target, events = FrameBuild(frame_store_path(root, spec)), event_cache_path(root)
    if not events.exists() or dataset_dir(root).is_dir():
        # Missing: build it. Recordings present: let the event pipeline refresh a stale cache
        # (a no-op that compares file stats when current), so changed inputs reach the frames.
        from dvsgkit.eventcache.build import build_event_cache

        build_event_cache(root, workers=workers, progress=progress, lock_timeout=lock_timeout)
    # Layout, seals, offsets, labels, checksum and the file's identity, from one open file.
    index = cache_read.read_events_index(events)
    # Held open until the build ends, so that the file keeps its inode number (on FUSE too).
    pin = os.open(events, os.O_RDONLY)
    try:
        cache_read.check_unchanged(
            events, index.identity, cache_read.file_identity(os.fstat(pin)), "its index was read"
        )
        found, why = status(target, spec, index.checksum, zarr_format, check_samples)
        if found == "current":
            target.outcome = "up to date"
            return target
        with (
            storage_errors(target, "write the frame store", WRITE_FIX),
            build_lock(lock_of(target), timeout=lock_timeout, what=str(target), notify=notify),
        ):
            # Another build may have finished while this one waited for the lock.
            found, why = status(target, spec, index.checksum, zarr_format, check_samples)
            if found == "current":
                target.outcome = "built by another process"
                return target
            if found in ("damaged", "format"):
                notify(f"{target} is {why}; rebuilding it")
            fmt = zarr_format or zarr_format_of(target) or layout.DEFAULT_ZARR_FORMAT
            sweep(root, target.name)  # what killed builds of this store left
            with scratch_dir(target) as tmp:
                context = BuildContext(spec, events, index.identity, tmp)
                _write_store(context, target, index, workers, progress, fmt)
                # The workers checked that they read the file of the index; a write in place,
                # or a replacement after the last of them, shows here.
                now = cache_read.file_identity(os.stat(events))
                cache_read.check_unchanged(events, index.identity, now, BUILDING)
                swap_in(tmp, target)  # an old store is moved aside, then deleted
    finally:
        os.close(pin)
    target.outcome = "rebuilt" if found in ("damaged", "format") else "built"
    target.why = why
    return target
