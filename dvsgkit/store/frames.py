"""The Zarr frame store: every sample of events.h5 integrated once into [T, 2, H, W] counts."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zarr

import dvsgkit
from dvsgkit.constants import CLASS_NAMES, NUM_CLASSES, SENSOR_SIZE, SPLITS
from dvsgkit.frames import check_frame_params, integrate_many
from dvsgkit.samples import dataset_dir
from dvsgkit.store.integrity import read_columns
from dvsgkit.store.signals import BuildSignals

LAYOUT = "dvsgkit.frames"
LAYOUT_VERSION = 1
EVENTS_LAYOUT = "dvsgkit.events"
EVENTS_LAYOUT_VERSION = 3  # the events.h5 layout this reads (x, y uint8 since 2, checksums 3)
# Format 2 is the default: zarr-python 2.x (still common), zarr-python 3 and tensorstore all read
# it; format 3 (zarr-python >= 3, tensorstore) is one flag away.
ZARR_FORMATS = (2, 3)
DEFAULT_ZARR_FORMAT = 2
# Counts are small and mostly zero: bit-shuffled zstd level 1 packs uint8 frames ~9x (synthetic
# data at the real density) at ~1 ms per 512 KiB sample; levels 5-9 gain 5-15 % for 4-80x the
# encoding time.
BLOSC = {"cname": "zstd", "clevel": 1}
# Widest first fit for the largest count in a split; never clip.
FRAME_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)
BLOCK_SAMPLES = 8  # samples integrated per task: ~8 * 4 MiB of int64 counts in flight per worker


def frame_store_path(root: Path, T: int, split_by: str) -> Path:
    """ROOT/frames_number_{T}_split_by_{split_by}.zarr (SpikingJelly's folder name plus .zarr)."""
    check_frame_params(T, split_by)
    return Path(root) / f"frames_number_{T}_split_by_{split_by}.zarr"


def _compressor(zarr_format: int) -> Any:
    if zarr_format == 2:
        import numcodecs

        return numcodecs.Blosc(shuffle=numcodecs.Blosc.BITSHUFFLE, **BLOSC)
    from zarr.codecs import BloscCodec

    return BloscCodec(shuffle="bitshuffle", **BLOSC)


def read_events_index(events_path: Path) -> dict[str, Any]:
    """Check events.h5 against its documented layout; return its attrs and per-split index
    (offsets, labels, sample ids). ValueError / FileNotFoundError name the path and the fix."""
    fix = f"delete {events_path} and run 'dvsgkit events' to rebuild it"
    if not events_path.is_file():
        raise FileNotFoundError(f"{events_path} not found; run 'dvsgkit events' first")
    try:
        with h5py.File(events_path, "r") as f:
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
            if attrs.get("layout") != EVENTS_LAYOUT:
                raise ValueError(f"{events_path} is not a dvsgkit event cache (no layout attr)")
            if int(attrs.get("layout_version", -1)) != EVENTS_LAYOUT_VERSION:
                raise ValueError(
                    f"{events_path} has event layout_version {attrs.get('layout_version')}, "
                    f"this dvsgkit reads {EVENTS_LAYOUT_VERSION}"
                )
            splits = {}
            for split in SPLITS:
                if split not in f:
                    raise ValueError(f"{events_path} has no '{split}' group")
                g = f[split]
                missing = [k for k in ("t", "x", "y", "p", "offsets", "labels") if k not in g]
                if missing:
                    raise ValueError(f"{events_path}:{split} lacks dataset(s) {missing}")
                offsets, labels = g["offsets"][()].astype(np.int64), g["labels"][()]
                n = labels.shape[0]
                trial = [s.decode() if isinstance(s, bytes) else str(s) for s in g["trial"][()]]
                row = g["row"][()].tolist() if "row" in g else list(range(n))
                if (
                    offsets.shape != (n + 1,)
                    or offsets[0] != 0
                    or (np.diff(offsets) < 0).any()
                    or offsets[-1] != g["x"].shape[0]
                    or any(g[k].shape[0] != g["x"].shape[0] for k in "typ")
                    or (n and int(labels.max()) >= NUM_CLASSES)
                    or len(trial) != n
                ):
                    raise ValueError(f"{events_path}:{split} has inconsistent offsets or labels")
                splits[split] = {
                    "offsets": offsets,
                    "labels": labels.astype(np.uint8),
                    "sample_ids": [f"{tr}:{r}" for tr, r in zip(trial, row, strict=True)],
                }
    except OSError as exc:  # h5py's "unable to open / truncated file"
        raise ValueError(
            f"{events_path} is not a readable HDF5 event cache ({exc}); {fix}"
        ) from exc
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{events_path} does not follow the event layout ({exc}); {fix}") from exc
    except ValueError as exc:
        if str(events_path) in str(exc) and fix not in str(exc):
            raise ValueError(f"{exc}; {fix}") from exc
        raise
    return {"attrs": attrs, "splits": splits}


def events_checksum(events_path: Path) -> str:
    """The event cache's own fingerprint (EventCache.checksum), recorded as provenance."""
    from dvsgkit.store.events import EventCache

    with EventCache(events_path) as cache:
        return cache.checksum()


def _integrate_block(task: tuple) -> tuple[int, int, int]:
    """Worker: read samples [s0, s1) from events.h5, integrate, write them when they fit the
    dtype. Returns (s0, s1, largest count); a block whose counts overflow is not written."""
    events_path, split, s0, s1, offsets, T, split_by, frames_path, dtype = task
    e0, e1 = int(offsets[0]), int(offsets[-1])
    fields = ("x", "y", "p", "t") if split_by == "time" else ("x", "y", "p")  # "number" needs no t
    with h5py.File(events_path, "r") as f:  # damage and pixels off the sensor: one clear line
        events = read_columns(f[split], events_path, fields, e0, e1, sensor=SENSOR_SIZE,
                              offsets=offsets, first_sample=s0)  # fmt: skip
    counts = integrate_many(events, offsets, T, split_by)  # [S, T, 2, H, W] int64
    largest = int(counts.max()) if counts.size else 0
    if largest <= np.iinfo(dtype).max:
        zarr.open_array(frames_path, mode="r+")[s0:s1] = counts.astype(dtype)
    return s0, s1, largest


def _pick_dtype(largest: int) -> np.dtype:
    return np.dtype(next(d for d in FRAME_DTYPES if largest <= np.iinfo(d).max))


def _write_split(
    group: zarr.Group,
    store_path: Path,
    split: str,
    index: dict[str, Any],
    events_path: Path,
    T: int,
    split_by: str,
    zarr_format: int,
    pool: ProcessPoolExecutor | None,
    bar: Any,
    check: Callable[[], None],
) -> None:
    offsets, labels = index["offsets"], index["labels"]
    n = labels.shape[0]
    H, W = SENSOR_SIZE
    sub = group.create_group(split)
    sub.create_array("labels", data=labels, chunks=(max(n, 1),), compressors=None)
    dtype = np.dtype(FRAME_DTYPES[0])
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
            (events_path, split, s0, min(s0 + BLOCK_SAMPLES, n),
             offsets[s0 : s0 + BLOCK_SAMPLES + 1], T, split_by, frames_path, dtype)
            for s0 in range(0, n, BLOCK_SAMPLES)
        ]  # fmt: skip
        results = pool.map(_integrate_block, tasks) if pool else map(_integrate_block, tasks)
        largest = 0
        for s0, s1, block_max in results:
            check()  # between blocks: an interrupted build stops here
            largest = max(largest, block_max)
            bar.update(s1 - s0)
        if largest <= np.iinfo(dtype).max:
            break
        dtype = _pick_dtype(largest)
        bar.total += n
        bar.refresh()
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    sub.attrs.update(
        {
            "num_samples": n,
            "class_counts": counts.tolist(),
            "max_count": largest,
            "sample_ids": index["sample_ids"],  # "{recording stem}:{row in its labels CSV}"
        }
    )


def store_status(path: Path, T: int, split_by: str, checksum: str | None) -> str:
    """'absent', 'current' (complete, same inputs), 'stale' (ours, but incomplete or built from
    other inputs); FileExistsError when the path holds anything else, which is never replaced."""
    if not path.exists():
        return "absent"
    try:
        attrs = dict(zarr.open_group(path, mode="r").attrs)
    except Exception as exc:  # zarr raises several types for "not a group"; all mean: not ours
        raise FileExistsError(
            f"{path} exists but is not a Zarr group ({type(exc).__name__}); "
            "move it away or delete it, then rerun"
        ) from exc
    if attrs.get("layout") != LAYOUT:
        raise FileExistsError(
            f"{path} holds a Zarr group that is not a dvsgkit frame store; move it away or "
            "delete it, then rerun"
        )
    if attrs.get("T") != T or attrs.get("split_by") != split_by:
        raise FileExistsError(
            f"{path} holds a frame store of another configuration (T={attrs.get('T')}, "
            f"split_by={attrs.get('split_by')!r}), not T={T}, split_by={split_by!r}; "
            "move it away or delete it, then rerun"
        )
    up_to_date = (
        attrs.get("complete") is True
        and attrs.get("layout_version") == LAYOUT_VERSION
        and attrs.get("events", {}).get("checksum") == checksum
    )
    return "current" if up_to_date else "stale"


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an flock on lock_path: a second build of the same store waits here."""
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_frame_store(
    root: Path,
    T: int,
    split_by: str = "number",
    *,
    workers: int = 2,
    progress: bool = True,
    zarr_format: int = DEFAULT_ZARR_FORMAT,
) -> Path:
    """Write ROOT/frames_number_{T}_split_by_{split_by}.zarr from ROOT/events.h5 (built first
    when missing). A complete store made from the same event cache is left as is (no-op)."""
    check_frame_params(T, split_by)
    if zarr_format not in ZARR_FORMATS:
        raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = Path(root)
    target = frame_store_path(root, T, split_by)
    events_path = root / "events.h5"
    if not events_path.exists() or dataset_dir(root).is_dir():
        # Missing: build it. Recordings present: let the event pipeline refresh a stale cache
        # (a no-op that compares file stats when current), so changed inputs reach the frames.
        from dvsgkit.store.events import build_event_cache

        build_event_cache(root, workers=workers, progress=progress)
    index = read_events_index(events_path)
    checksum = events_checksum(events_path)
    if store_status(target, T, split_by, checksum) == "current":
        return target
    with _exclusive(root / f".{target.name}.lock"):
        # Another build may have finished while this one waited for the lock.
        if store_status(target, T, split_by, checksum) == "current":
            return target
        for leftover in root.glob(f".{target.name}.*.partial"):  # from a killed build
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=root))
        try:
            with BuildSignals() as signals:  # Ctrl-C / kill: stop at the next block, clean up
                _write_store(tmp, index, events_path, checksum, T, split_by, workers, progress,
                             zarr_format, signals.check)  # fmt: skip
                signals.check()
            # The workers open events.h5 by name: had a concurrent 'dvsgkit events' replaced it
            # with other samples, they read those against the index read above.
            if events_checksum(events_path) != checksum:
                raise ValueError(
                    f"{events_path} was replaced while the frames were being built (another "
                    "'dvsgkit events' of this root?); no store was written: rerun"
                )
            _swap_into_place(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap
    return target


def _write_store(
    tmp: Path,
    index: dict[str, Any],
    events_path: Path,
    checksum: str,
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
                "checksum": checksum,
                "layout_version": index["attrs"].get("layout_version"),
                "dvsgkit_version": index["attrs"].get("dvsgkit_version"),
            },
            "build_id": uuid.uuid4().hex,
            "complete": False,  # set True last: a store without it never counts as built
        }
    )
    total = sum(s["labels"].shape[0] for s in index["splits"].values())
    pool = (
        ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_init_worker)
        if workers > 1
        else None
    )
    try:
        with tqdm(total=total, unit="sample", desc=tmp.name[1:].split(".zarr")[0],
                  disable=not progress) as bar:  # fmt: skip
            for split in SPLITS:
                _write_split(group, tmp, split, index["splits"][split], events_path, T, split_by,
                             zarr_format, pool, bar, check)  # fmt: skip
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    group.attrs["complete"] = True


def _init_worker() -> None:
    # Ctrl-C in a terminal reaches the whole process group. The parent alone acts on it (it
    # cancels the rest and removes the partial store); a worker would die printing a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork where it is safe: workers start at once, not after re-importing the caller's modules
    (torch, ~seconds, under spawn). zarr resets its IO loop in a forked child; CUDA cannot be
    forked, so a process that has initialised it gets spawn."""
    torch = sys.modules.get("torch")
    cuda_live = torch is not None and torch.cuda.is_initialized()
    if cuda_live or "fork" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    return multiprocessing.get_context("fork")


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished store onto target; an old store is moved aside first, then deleted."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", suffix=".partial",
                                    dir=target.parent))  # fmt: skip
        os.rename(target, old / "store")
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def open_frame_store(path: Path, split: str | None = None) -> zarr.Group:
    """Open a complete frame store read-only (the root group, or one split's group); errors name
    the path and what to do."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; build it with 'dvsgkit frames -T <T>'")
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as exc:  # several zarr error types mean "not a group here"
        raise ValueError(f"{path} is not a Zarr group ({type(exc).__name__}: {exc})") from exc
    attrs = dict(group.attrs)
    if attrs.get("layout") != LAYOUT:
        raise ValueError(
            f"{path} is not a dvsgkit frame store (layout attr {attrs.get('layout')!r})"
        )
    if attrs.get("complete") is not True:
        raise ValueError(f"{path} is incomplete (an interrupted build?); rerun 'dvsgkit frames'")
    if split is None:
        return group
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if split not in group or "frames" not in group[split] or "labels" not in group[split]:
        raise ValueError(
            f"{path} has no complete '{split}' split (frames and labels); rebuild it with "
            f"'dvsgkit frames -T {attrs.get('T')} --split-by {attrs.get('split_by')}'"
        )
    return group[split]
