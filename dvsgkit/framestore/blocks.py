"""A split of the frame store, written block by block: workers read a block of samples from
events.h5 and integrate them; a regular split's workers write their samples (one chunk each),
a ragged split's send their frames back and the parent writes them in order, RAGGED_CHUNK_FRAMES
to a chunk, since where a block's frames go depends on how many frames the blocks before it
had."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from dvsgkit.constants import NUM_CLASSES
from dvsgkit.eventcache import read as cache_read
from dvsgkit.eventcache.read import EventCache, SplitIndex
from dvsgkit.frames import FrameSpec, Integrator, frame_size, integrate_samples
from dvsgkit.framestore import chunks, layout
from dvsgkit.framestore.check import array_checksum, sample_checksum

FRAME_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)  # the narrowest that fits; never clip
BLOCK_SAMPLES = 8  # samples integrated per task: ~8 * 4 MiB of int64 counts in flight per worker
# zarr skips chunks equal to the fill value unless told otherwise; a dvsgkit store writes every
# chunk, so that a missing chunk file always means damage.
WRITE_ALL = {"array.write_empty_chunks": True}  # zarr.config.set(WRITE_ALL) while writing
BUILDING = "the frames were being built"  # when the event cache was replaced


@dataclass(frozen=True)
class BuildContext:
    """What every block of one build shares: the frames wanted, the event cache (and the
    identity of the file its index was read from), and the store being written."""

    spec: FrameSpec
    events: Path
    identity: tuple[int, int, int]
    store: Path  # the temporary folder
    block: int = BLOCK_SAMPLES  # samples per task


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
    overflow the dtype and nothing was written); for a ragged split each sample's frame count
    and the block's frames [F, 2, H, W], for the parent to write."""

    s0: int
    s1: int
    largest: int
    checksums: list[int]
    frames: list[int]
    values: np.ndarray | None = None


def integrate_block(task: BlockTask, integrate: Integrator | None = None) -> BlockResult:
    """Worker: read the block's samples from events.h5, integrate them, write them (or, ragged,
    return them) when they fit the dtype."""
    build, offsets, spec = task.build, task.offsets, task.build.spec
    s1 = task.s0 + len(offsets) - 1
    fields = ("x", "y", "p", "t") if spec.needs_t else ("x", "y", "p")
    with EventCache(build.events) as cache:  # damage, pixels off the sensor: one clear line
        # The same file as the index: a cache replaced since (mv, rsync) is never read.
        cache_read.check_unchanged(build.events, build.identity, cache.identity, BUILDING)
        columns = cache.columns(task.split, fields, int(offsets[0]), int(offsets[-1]),
                                offsets=offsets, first_sample=task.s0)  # fmt: skip
    counts, frame_offsets = integrate_samples(columns, offsets, spec, integrate=integrate)
    largest = int(counts.max()) if counts.size else 0
    if largest > np.iinfo(task.dtype).max:
        return BlockResult(task.s0, s1, largest, [], [])
    frames = counts.astype(task.dtype)  # [F, 2, H, W]
    del counts
    parts = [frames[a:b] for a, b in zip(frame_offsets[:-1], frame_offsets[1:], strict=True)]
    sums = [sample_checksum(p) for p in parts]
    if spec.ragged:
        return BlockResult(task.s0, s1, largest, sums, [len(p) for p in parts], frames)
    with zarr.config.set(WRITE_ALL):
        array = zarr.open_array(build.store / task.split / "frames", mode="r+")
        array[task.s0 : s1] = frames.reshape(s1 - task.s0, spec.T, *frames.shape[1:])
    return BlockResult(task.s0, s1, largest, sums, [])


Run = Callable[[list[BlockTask]], Iterable[BlockResult]]  # block results, in task order


def write_split(
    group: zarr.Group, build: BuildContext, split: str, index: SplitIndex, run: Run,
    after_block: Callable[[int], None],
) -> None:  # fmt: skip
    """Write `split`: labels, frames (uint8 first; on an overflow, one more pass in the dtype
    that fits), checksums (and frame offsets for a ragged spec), and the split's record."""
    spec, labels, n = build.spec, index.labels, index.labels.shape[0]
    sub = group.create_group(split)
    one_chunk = {"chunks": (max(n, 1),), "compressors": None}
    sub.create_array("labels", data=labels, **one_chunk)
    shape = (2, *frame_size(spec)) if spec.ragged else (spec.T, 2, *frame_size(spec))
    dtype, sums = np.dtype(FRAME_DTYPES[0]), np.zeros(n, np.uint32)  # [N] crc32 of each sample
    folder = build.store / split / "frames"
    while True:
        array = sub.create_array(
            "frames", shape=(0 if spec.ragged else n, *shape), dtype=dtype, fill_value=0,
            chunks=(chunks.RAGGED_CHUNK_FRAMES if spec.ragged else 1, *shape),  # or 1 sample
            compressors=chunks.compressor(group.metadata.zarr_format), overwrite=True,
        )  # fmt: skip
        tasks = [BlockTask(build, split, s0, index.offsets[s0 : s0 + build.block + 1], dtype)
                 for s0 in range(0, n, build.block)]  # fmt: skip
        largest, counts = 0, np.zeros(n, np.int64)  # [N] frames of each sample (ragged)
        writer = chunks.ChunkWriter(array, folder)  # ragged: holds less than one chunk
        for block in run(tasks):
            largest = max(largest, block.largest)
            sums[block.s0 : block.s1] = block.checksums or 0
            if block.values is not None and largest <= np.iinfo(dtype).max:  # else: rerun
                writer.append(block.values)
                counts[block.s0 : block.s1] = block.frames
            after_block(block.s1 - block.s0)  # an interrupted build stops here, so does a full disk
        writer.flush()
        if largest <= np.iinfo(dtype).max:
            break
        dtype = np.dtype(next(d for d in FRAME_DTYPES if largest <= np.iinfo(d).max))
    record = {}
    if spec.ragged:
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        array.resize((int(offsets[-1]), *shape))
        sub.create_array("frame_offsets", data=offsets, chunks=(n + 1,), compressors=None)
        record = {"num_frames": int(offsets[-1]), "frame_offsets_crc32": array_checksum(offsets)}
    sub.create_array("checksums", data=sums, **one_chunk)
    sub.attrs.update(
        num_samples=n,
        **record,
        dtype=dtype.name,
        class_counts=np.bincount(labels, minlength=NUM_CLASSES).tolist(),
        max_count=largest,
        sample_ids=index.sample_ids,  # "{recording stem}:{row in its labels CSV}"
        checksum=layout.CHECKSUM,  # of each sample, in the checksums array
        labels_crc32=array_checksum(labels),
        checksums_crc32=array_checksum(sums),
    )
