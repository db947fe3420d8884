"""Building a frame store: every sample of events.h5 integrated once into frames by worker
processes (blocks.py), written under a temporary name and swapped in whole."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zarr

import dvsgkit
from dvsgkit.constants import BUILD_WORKERS, CLASS_NAMES, SENSOR_SIZE, SPLITS
from dvsgkit.errors import InputError, storage_errors
from dvsgkit.eventcache import read as cache_read
from dvsgkit.eventcache.layout import event_cache_path
from dvsgkit.eventcache.read import EventsIndex
from dvsgkit.frames import FrameSpec, Integrator, frame_size
from dvsgkit.framestore import layout
from dvsgkit.framestore.blocks import (
    BLOCK_SAMPLES,
    BUILDING,
    WRITE_ALL,
    BlockResult,
    BlockTask,
    BuildContext,
    integrate_block,
    write_split,
)
from dvsgkit.framestore.budget import SpaceCheck, check_memory, frames_per_sample
from dvsgkit.framestore.check import status
from dvsgkit.framestore.custom import custom_spec, refuse_without_function
from dvsgkit.framestore.layout import frame_store_path, zarr_format_of
from dvsgkit.fs import scratch_dir, swap_in, sweep
from dvsgkit.fs.lock import DEFAULT_LOCK_TIMEOUT, build_lock, lock_of, to_stderr
from dvsgkit.pool import BuildSignals, WorkerPool
from dvsgkit.samples import dataset_dir

WRITE_FIX = "free some space, or use another --root"


class FrameBuild(type(Path())):  # type: ignore[misc]
    """The store's path, as build_frame_store returns it, saying what the build did: `outcome`
    "built", "rebuilt" (the old store was damaged, or of another Zarr format than asked for;
    `why` says how), "up to date" or "built by another process" (current once the lock was held)."""

    outcome = ""
    why = ""


def _write_store(build: BuildContext, target: Path, index: EventsIndex, workers: int,
                 progress: bool, zarr_format: int, integrate: Integrator | None,
                 source: dict[str, Any] | None) -> None:  # fmt: skip
    """Write the whole store into `build.store`; Ctrl-C or a kill stops it at the next block.
    `source`: the custom integrator's provenance, recorded beside its spec."""
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
            "frame_axes": layout.frame_axes(build.spec.ragged),
            "events": {
                "file": build.events.name,
                "checksum": index.checksum,
                "layout_version": index.attrs.get("layout_version"),
                "dvsgkit_version": index.attrs.get("dvsgkit_version"),
            },
            **({"integrator_source": source} if source else {}),
            "build_id": uuid.uuid4().hex,
            "complete": False,  # set True last: a store without it never counts as built
        }
    )
    total = sum(s.labels.shape[0] for s in index.splits.values())
    space = SpaceCheck(build.store, total, target, per_file=not build.spec.ragged)
    worker = functools.partial(integrate_block, integrate=integrate)
    with (
        BuildSignals() as signals,
        WorkerPool(worker, workers) if workers > 1 else contextlib.nullcontext() as pool,
        tqdm(total=total, unit="sample", desc=target.stem, disable=not progress) as bar,
    ):  # the pool first: its workers fork before tqdm starts a thread

        def run(tasks: list[BlockTask]) -> Iterator[BlockResult]:
            if pool is None:
                return map(worker, tasks)
            return pool.map([(task,) for task in tasks], 2 * pool.size, signals.check)

        def after_block(samples: int) -> None:
            signals.check()
            bar.update(samples)
            space.after_block(samples)

        try:
            for split in SPLITS:
                with zarr.config.set(WRITE_ALL):  # an all-zero labels chunk is written too
                    write_split(group, build, split, index.splits[split], run, after_block)
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


def refresh_event_cache(
    root: Path, *, workers: int, progress: bool, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
) -> Path:
    """ROOT/events.h5, built when missing; while the recordings are there, the event pipeline
    refreshes a stale cache (a no-op that compares file stats when current), so changed inputs
    reach what is built from it."""
    events = event_cache_path(root)
    if not events.exists() or dataset_dir(root).is_dir():
        from dvsgkit.eventcache.build import build_event_cache

        build_event_cache(root, workers=workers, progress=progress, lock_timeout=lock_timeout)
    return events


def build_frame_store(
    root: Path,
    spec: FrameSpec,
    *,
    integrate: Integrator | None = None,
    workers: int = BUILD_WORKERS,
    progress: bool = True,
    zarr_format: int | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    check_samples: bool = False,
    notify: Callable[[str], None] = to_stderr,
) -> FrameBuild:
    """Write ROOT/{spec.name}.zarr from ROOT/events.h5 (built, or refreshed while the recordings
    are there, first) and return its path, saying what was done (FrameBuild). With
    `integrate=fn` (fn(events, H, W) -> frames [T_i, 2, H, W]) the frames are fn's, after the
    spec's denoise and size, in ROOT/{fn.__name__}[...].zarr (SpikingJelly's
    custom_integrate_function). A complete store built from the same cache is left as it is
    once `status` finds it sound (its structure: milliseconds; with `check_samples`, every
    sample: seconds). A damaged one, or one in another Zarr format than `zarr_format` asks for
    (None: an existing store's, else DEFAULT_ZARR_FORMAT), is rebuilt after one line saying
    why goes to `notify`. Written under a temporary name and swapped in whole: an error,
    Ctrl-C or a kill leaves no half store. A second build of the store waits for the first (at
    most `lock_timeout` s, saying so through `notify`). StorageError: a full disk, a read-only
    file system, no permission."""
    if zarr_format is not None and zarr_format not in layout.ZARR_FORMATS:
        raise InputError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    spec, source = custom_spec(spec, integrate)
    if not spec.ragged:
        check_memory(spec.T, workers, BLOCK_SAMPLES, frame_size(spec))
    root = Path(root)
    target = FrameBuild(frame_store_path(root, spec))
    events = refresh_event_cache(root, workers=workers, progress=progress,
                                 lock_timeout=lock_timeout)  # fmt: skip
    # Layout, seals, offsets, labels, checksum and the file's identity, from one open file.
    index = cache_read.read_events_index(events)
    # Held open until the build ends, so that the file keeps its inode number (on FUSE too).
    pin = os.open(events, os.O_RDONLY)
    try:
        cache_read.check_unchanged(
            events, index.identity, cache_read.file_identity(os.fstat(pin)), "its index was read"
        )
        check = functools.partial(status, target, spec, index.checksum, zarr_format,
                                  check_samples, source=source)  # fmt: skip
        found, why = check()
        if found == "current":
            target.outcome = "up to date"
            return target
        if spec.mode == "custom" and integrate is None:
            raise InputError(refuse_without_function(target, spec, found, why))
        with (
            storage_errors(target, "write the frame store", WRITE_FIX),
            build_lock(lock_of(target), timeout=lock_timeout, what=str(target), notify=notify),
        ):
            # Another build may have finished while this one waited for the lock.
            found, why = check()
            if found == "current":
                target.outcome = "built by another process"
                return target
            if found in ("damaged", "format"):
                notify(f"{target} is {why}; rebuilding it")
            _build(target, events, index, spec, workers, progress,
                   zarr_format or zarr_format_of(target) or layout.DEFAULT_ZARR_FORMAT,
                   integrate, source)  # fmt: skip
    finally:
        os.close(pin)
    target.outcome = "rebuilt" if found in ("damaged", "format") else "built"
    target.why = why
    return target


def _build(target: Path, events: Path, index: EventsIndex, spec: FrameSpec, workers: int,
           progress: bool, fmt: int, integrate: Integrator | None,
           source: dict[str, Any] | None) -> None:  # fmt: skip
    """Under the store's lock: sweep what killed builds left, write the store in a scratch
    folder, check the event cache was not replaced meanwhile, swap the store in."""
    block = BLOCK_SAMPLES
    per_sample = frames_per_sample(events, index, spec)  # refuses a frame longer than all samples
    if spec.ragged:  # the memory a block takes, now that its frame counts are known
        block = max(1, min(BLOCK_SAMPLES, BLOCK_SAMPLES * 16 // per_sample))
        check_memory(per_sample, workers, block, frame_size(spec))
    sweep(target.parent, target.name)  # what killed builds of this store left
    with scratch_dir(target) as tmp:
        context = BuildContext(spec, events, index.identity, tmp, block)
        _write_store(context, target, index, workers, progress, fmt, integrate, source)
        # The workers checked that they read the file of the index; a write in place, or a
        # replacement after the last of them, shows here.
        now = cache_read.file_identity(os.stat(events))
        cache_read.check_unchanged(events, index.identity, now, BUILDING)
        swap_in(tmp, target)  # an old store is moved aside, then deleted
