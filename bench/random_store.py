"""A full-size frame store in seconds: real sample counts and layout, random event counts.

Training speed does not depend on what the frames show, only on their shape and dtype, so a
timing run needs no realistic recordings. Writing 551 M synthetic events as AEDAT and parsing
them back takes minutes; this writes a small synthetic dataset (a few events per sample, so the
event cache and the store's records are real), builds its store as `dvsgkit train` would, then
overwrites every sample with random counts at about the real density (~0.5 events per cell,
uint8) and records their checksums, so the store verifies as intact and `dvsgkit train` uses it
as it is.

    python bench/random_store.py --root /tmp/dvsg_random            # 1176 + 288 samples, T=16
    python bench/random_store.py --root /tmp/tiny --train-trials 1 --test-trials 1 -T 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import zarr

from dvsgkit.constants import SPLITS
from dvsgkit.eventcache.build import build_event_cache
from dvsgkit.frames import FrameSpec
from dvsgkit.framestore import check as verify
from dvsgkit.framestore.build import WRITE_ALL, build_frame_store
from dvsgkit.synth import write_synthetic_dataset

FULL_TRIALS = {"train": 98, "test": 24}  # x 12 gestures = 1176 + 288 samples
BLOCK = 32  # samples generated and written at once (~16 MiB of uint8 at T=16)
# count = [u < 90] + [u < 30] + [u < 8] for u uniform in 0..255: mean (90 + 30 + 8) / 256 = 0.5
# per cell, i.e. ~260 k events per sample at T=16, the order of the real ~360 k.
LEVELS = (90, 30, 8)


def random_counts(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 counts 0..3, mostly 0, fast (one random byte per cell)."""
    u = rng.integers(0, 256, size=shape, dtype=np.uint8)
    counts = np.zeros(shape, np.uint8)
    for level in LEVELS:
        counts += u < level
    return counts


def build_random_store(
    root: Path, T: int = 16, train_trials: int = 98, test_trials: int = 24, *,
    seed: int = 0, workers: int = 4,
) -> tuple[Path, dict[str, float]]:  # fmt: skip
    """ROOT's frame store for T, `train_trials` x 12 train and `test_trials` x 12 test samples
    of random counts; returns it and the seconds each stage took."""
    times: dict[str, float] = {}
    start = time.perf_counter()
    write_synthetic_dataset(root, seed=seed, train_trials=train_trials,
                            test_trials=test_trials, events_per_sample=64)  # fmt: skip
    build_event_cache(root, workers=workers, progress=False)
    store = build_frame_store(root, FrameSpec(T, "number"), workers=workers, progress=False)
    times["records_s"] = time.perf_counter() - start
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    group = zarr.open_group(store, mode="r+")
    with zarr.config.set(WRITE_ALL):
        for split in SPLITS:
            sub = group[split]
            frames = sub["frames"]
            if frames.dtype != np.uint8:
                raise ValueError(f"{store}/{split}/frames is {frames.dtype}, expected uint8")
            n = frames.shape[0]
            sums = np.zeros(n, np.uint32)
            largest = 0
            for s0 in range(0, n, BLOCK):
                counts = random_counts(rng, (min(BLOCK, n - s0), *frames.shape[1:]))
                frames[s0 : s0 + len(counts)] = counts
                sums[s0 : s0 + len(counts)] = [verify.sample_checksum(c) for c in counts]
                largest = max(largest, int(counts.max()))
            sub["checksums"][:] = sums
            sub.attrs.update({"max_count": largest, "checksums_crc32": verify.array_checksum(sums)})
    times["random_counts_s"] = time.perf_counter() - start
    return store, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("-T", type=int, default=16)
    parser.add_argument("--train-trials", type=int, default=FULL_TRIALS["train"])
    parser.add_argument("--test-trials", type=int, default=FULL_TRIALS["test"])
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    store, times = build_random_store(args.root, args.T, args.train_trials, args.test_trials,
                                      workers=args.workers)  # fmt: skip
    print(json.dumps({"store": str(store), **times}))


if __name__ == "__main__":
    main()
