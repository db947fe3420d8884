"""Frame store vs SpikingJelly's frames folder on the same samples: build time, bytes, equality,
loader samples/s. Run in the bench venv (spikingjelly==0.0.0.0.14 + torchvision):

    .venv-bench/bin/python bench/frames.py --train-trials 4 --test-trials 2

Full size (the real split's 98 + 24 recordings, ~360k events per sample; ~6 GB for SpikingJelly's
folder): --train-trials 98 --test-trials 24 --events-per-sample 360000. Use --root to reuse a
dataset (e.g. the real one): the synthetic generator runs only when ROOT/extract is missing.

--checksum-cost measures only the store build with and without its per-sample crc32 checksums,
alternating, on the same event cache (no SpikingJelly needed):

    .venv/bin/python bench/frames.py --checksum-cost --train-trials 8 --test-trials 2 \
        --events-per-sample 100000 --reps 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dvsgkit.constants import SPLITS
from dvsgkit.eventcache.build import build_event_cache
from dvsgkit.eventcache.read import EventCache
from dvsgkit.frames import FrameSpec
from dvsgkit.framestore import blocks as frame_build
from dvsgkit.framestore.build import build_frame_store, frame_store_path
from dvsgkit.info import size_on_disk
from dvsgkit.synth import write_synthetic_dataset

if TYPE_CHECKING:
    import torch


def sj_name(trials: list[str], labels: np.ndarray) -> list[str]:
    """SpikingJelly's file name per sample: {stem}_{k}, k counting earlier rows of the same label
    in the same recording (docs/reference.md §3)."""
    seen: dict[tuple[str, int], int] = {}
    names = []
    for trial, label in zip(trials, labels.tolist(), strict=True):
        k = seen.get((trial, label), 0)
        seen[(trial, label)] = k + 1
        names.append(f"{trial}_{k}")
    return names


def write_events_np(cache: EventCache, sj_root: Path) -> None:
    """SpikingJelly's events_np/{split}/{label}/{stem}_{k}.npz from the same samples, written the
    way its split_aedat_files_to_np writes them (compressed npz of t, x, y, p)."""
    for split in SPLITS:
        labels = cache.labels(split)
        for i, name in enumerate(sj_name(cache.trials(split), labels)):
            folder = sj_root / "events_np" / split / str(labels[i])
            folder.mkdir(parents=True, exist_ok=True)
            ev = cache.sample(split, i)
            np.savez_compressed(folder / f"{name}.npz", **{k: ev[k] for k in "txyp"})


def sj_datasets(sj_root: Path, T: int, split_by: str) -> dict:
    """SpikingJelly's DVS128Gesture frame datasets (the first call integrates and saves)."""
    from spikingjelly.datasets.dvs128_gesture import DVS128Gesture

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per file
        return {
            split: DVS128Gesture(
                str(sj_root),
                train=split == "train",
                data_type="frame",
                frames_number=T,
                split_by=split_by,
            )  # fmt: skip
            for split in SPLITS
        }


def check_equal(cache: EventCache, store: Path, sj_root: Path, T: int, split_by: str) -> int:
    """Every sample's frames in the store equal SpikingJelly's saved frames; returns the count."""
    import zarr

    group = zarr.open_group(store, mode="r")
    folder = sj_root / f"frames_number_{T}_split_by_{split_by}"
    checked = 0
    for split in SPLITS:
        labels = cache.labels(split)
        frames = group[split]["frames"]
        for i, name in enumerate(sj_name(cache.trials(split), labels)):
            ref = np.load(folder / split / str(labels[i]) / f"{name}.npz")["frames"]
            if not np.array_equal(ref, frames[i]):
                raise AssertionError(f"{split} sample {i} ({name}) differs from SpikingJelly")
            checked += 1
    return checked


def samples_per_second(batches, device: torch.device, max_batches: int) -> float:
    """Drain epochs of `batches` as a training loop would (each batch on the device, touched)
    until max_batches batches; the first batch is warm-up, not timed."""
    import torch

    n, done, start = 0, 0, None
    while done < max_batches:
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x.sum()  # touch the batch on the device, as the first layer would
            if device.type == "cuda":
                torch.cuda.synchronize()
            if start is None:
                start = time.perf_counter()
            else:
                n += y.numel()
            done += 1
            if done == max_batches:
                break
    return n / (time.perf_counter() - start)


def checksum_cost(root: Path, T: int, split_by: str, workers: int, reps: int) -> None:
    """Build time of the store with and without its per-sample checksums, alternating runs on
    the same event cache; "without" replaces the checksum by a constant (the workers fork with
    the replacement), everything else is the same build."""
    real = frame_build.sample_checksum
    times: dict[str, list[float]] = {"with checksums": [], "without": []}
    build_frame_store(
        root, FrameSpec(T, split_by), workers=workers, progress=False
    )  # warm-up, not timed
    for rep in range(reps):
        for mode in list(times)[:: 1 if rep % 2 == 0 else -1]:  # alternate the order: drift cancels
            shutil.rmtree(frame_store_path(root, FrameSpec(T, split_by)), ignore_errors=True)
            if mode == "without":
                frame_build.sample_checksum = lambda frames: 0
            try:
                start = time.perf_counter()
                build_frame_store(root, FrameSpec(T, split_by), workers=workers, progress=False)
                times[mode].append(time.perf_counter() - start)
            finally:
                frame_build.sample_checksum = real
    for mode, t in times.items():
        print(f"build {mode}: median {np.median(t):.2f} s, min {min(t):.2f} s of "
              f"{', '.join(f'{x:.2f}' for x in t)}")  # fmt: skip
    for stat in (np.median, min):
        with_, without = (float(stat(t)) for t in times.values())
        print(f"checksum overhead ({stat.__name__}): {100 * (with_ - without) / without:+.1f} % "
              "of the build time")  # fmt: skip
    sample = np.random.default_rng(0).poisson(0.05, (T, 2, 128, 128)).astype(np.uint8)
    n = 200
    start = time.perf_counter()
    for _ in range(n):
        real(sample)
    per = (time.perf_counter() - start) / n
    print(f"crc32 of one uint8 sample ({sample.nbytes / 2**10:.0f} KiB): {per * 1e3:.3f} ms "
          f"({sample.nbytes / per / 1e9:.1f} GB/s)")  # fmt: skip


def main() -> None:
    # torch and the loaders are imported here, not at the top: a worker process that imports
    # this script again (spawn) then stays cheap.
    import torch

    from dvsgkit.data import make_loader

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", type=Path, help="dataset root to reuse (default: a temp dir)")
    ap.add_argument("--train-trials", type=int, default=4)
    ap.add_argument("--test-trials", type=int, default=2)
    ap.add_argument("--events-per-sample", type=int, default=20_000)
    ap.add_argument("-T", type=int, default=16)
    ap.add_argument("--split-by", choices=["number", "time"], default="number")
    ap.add_argument("--workers", type=int, default=2, help="dvsgkit build processes")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--sj-workers", type=int, default=2, help="SpikingJelly DataLoader workers")
    ap.add_argument("--max-batches", type=int, default=100, help="batches timed per loader")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--checksum-cost",
        action="store_true",
        help="only time the store build with and without its checksums",
    )
    ap.add_argument("--reps", type=int, default=3, help="builds of each kind (--checksum-cost)")
    args = ap.parse_args()
    device = torch.device(args.device)

    tmp = Path(tempfile.mkdtemp(prefix="dvsgkit-bench-frames-"))
    root = args.root or tmp / "root"
    try:
        if not (root / "extract").exists():
            write_synthetic_dataset(root, seed=0, train_trials=args.train_trials,
                                    test_trials=args.test_trials,
                                    events_per_sample=args.events_per_sample)  # fmt: skip
        events = build_event_cache(root, workers=args.workers, progress=False)
        if args.checksum_cost:
            with EventCache(events) as cache:
                n = {s: cache.num_samples(s) for s in SPLITS}
                total_events = sum(int(cache.offsets(s)[-1]) for s in SPLITS)
            print(f"samples: {n['train']} train + {n['test']} test, {total_events:,} events, "
                  f"T={args.T}, split_by={args.split_by}, {args.workers} workers")  # fmt: skip
            checksum_cost(root, args.T, args.split_by, args.workers, args.reps)
            return
        with EventCache(events) as cache:
            n = {s: cache.num_samples(s) for s in SPLITS}
            total_events = sum(int(cache.offsets(s)[-1]) for s in SPLITS)
            store = root / f"frames_number_{args.T}_split_by_{args.split_by}.zarr"
            shutil.rmtree(store, ignore_errors=True)
            start = time.perf_counter()
            build_frame_store(
                root, FrameSpec(args.T, args.split_by), workers=args.workers, progress=False
            )
            build_s = time.perf_counter() - start

            sj_root = tmp / "sj"
            write_events_np(cache, sj_root)
            start = time.perf_counter()
            sets = sj_datasets(sj_root, args.T, args.split_by)
            sj_build_s = time.perf_counter() - start
            checked = check_equal(cache, store, sj_root, args.T, args.split_by)

        ours_bytes = size_on_disk(store)
        sj_bytes = size_on_disk(sj_root / f"frames_number_{args.T}_split_by_{args.split_by}")
        samples = n["train"] + n["test"]
        print(f"samples: {n['train']} train + {n['test']} test, {total_events:,} events, "
              f"T={args.T}, split_by={args.split_by}, device {device}")  # fmt: skip
        print(f"frames equal to SpikingJelly's: {checked}/{samples} samples")
        print(f"build events.h5 -> store: {build_s:.2f} s ({samples / build_s:.0f} samples/s, "
              f"{total_events / build_s / 1e6:.1f} M events/s); SpikingJelly events_np -> "
              f"frames: {sj_build_s:.2f} s ({sj_build_s / build_s:.1f}x ours)")  # fmt: skip
        full = 1464 * 360_000 / (total_events / build_s)
        print(f"  at this rate the full dataset (1464 samples, ~527 M events) takes ~{full:.0f} s "
              "(an upper bound from small runs: start-up dominates them)")  # fmt: skip
        print(f"bytes on disk: store {ours_bytes / 1e6:.1f} MB, SpikingJelly frames "
              f"{sj_bytes / 1e6:.1f} MB: store = 1/{sj_bytes / ours_bytes:.1f}")  # fmt: skip
        # SpikingJelly's frames without compression (configure.save_datasets_compressed = False)
        # are float64: 8 bytes per count, ~4.9 GB for the train split at T=16.
        plain = samples * args.T * 2 * 128 * 128 * 8
        print(f"  against uncompressed float64 npz ({plain / 1e6:.1f} MB): "
              f"store = 1/{plain / ours_bytes:.0f}")  # fmt: skip

        if n["train"] < args.batch_size:
            raise SystemExit(f"need at least --batch-size {args.batch_size} train samples")
        kw = dict(shuffle=True, drop_last=True, device=device, seed=0)
        start = time.perf_counter()
        memory = make_loader(store, "train", args.batch_size, **kw)
        print(f"make_loader (memory) reads the train split onto {device} once: "
              f"{time.perf_counter() - start:.2f} s")  # fmt: skip
        sj_loader = torch.utils.data.DataLoader(
            sets["train"], batch_size=args.batch_size, shuffle=True, drop_last=True,
            num_workers=args.sj_workers, pin_memory=device.type == "cuda",
        )  # fmt: skip
        rates = {
            "SpikingJelly DVS128Gesture(frame) + DataLoader": samples_per_second(
                sj_loader, device, args.max_batches
            ),
            "dvsgkit make_loader (memory)": samples_per_second(memory, device, args.max_batches),
            "dvsgkit make_loader (stream, 2 workers)": samples_per_second(
                make_loader(store, "train", args.batch_size, memory_budget=0, workers=2, **kw),
                device,
                args.max_batches,
            ),
        }
        base = rates["SpikingJelly DVS128Gesture(frame) + DataLoader"]
        for name, rate in rates.items():
            print(f"loader {name}: {rate:,.0f} samples/s ({rate / base:.1f}x SpikingJelly)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
