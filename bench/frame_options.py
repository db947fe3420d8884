"""Frame store build time of every frame option against `-T 16` number frames, in one run on one
synthetic dataset, and the denoise filter against Tonic's `denoise_numpy` on the same events:

    .venv/bin/python bench/frame_options.py --train-trials 8 --test-trials 2 \
        --events-per-sample 100000 --reps 3

Each option's store is built `--reps` times from the same event cache (the store removed before
each build; the builds of all options interleaved, so that drift of the machine's load shows in
every row alike); the table gives the median and its ratio to `-T 16` number frames. The denoise
row times `dvsgkit.frames.denoise.denoise_keep` and Tonic's per-event loop on the first
`--denoise-samples` samples of the training split (Tonic's result checked equal).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from dvsgkit.data import TONIC_EVENT_DTYPE
from dvsgkit.eventcache.build import build_event_cache
from dvsgkit.eventcache.layout import event_cache_path
from dvsgkit.eventcache.read import EventCache
from dvsgkit.frames import FrameSpec
from dvsgkit.frames.denoise import denoise_keep
from dvsgkit.framestore.build import build_frame_store
from dvsgkit.framestore.layout import frame_store_path
from dvsgkit.synth import write_synthetic_dataset

BASELINE = ("-T 16", FrameSpec(16))
OPTIONS = [
    BASELINE,
    ("-T 16 --split-by time", FrameSpec(16, "time")),
    ("--duration 50ms", FrameSpec(duration_us="50ms")),
    ("--bin 10ms", FrameSpec(bin_us="10ms")),
    ("--bin 50ms -T 16", FrameSpec(16, bin_us="50ms")),
    ("-T 16 --size 64", FrameSpec(16, size=64)),
    ("-T 16 --size 32", FrameSpec(16, size=32)),
    ("-T 16 --denoise 10ms", FrameSpec(16, denoise_us="10ms")),
    ("--duration 50ms --size 32 --denoise 10ms",
     FrameSpec(duration_us="50ms", size=32, denoise_us="10ms")),
]  # fmt: skip


def build_times(root: Path, workers: int, reps: int) -> tuple[dict[str, list[float]], dict]:
    """Seconds of each option's build, `reps` each, the options interleaved; and the frames
    each option's store holds."""
    times: dict[str, list[float]] = {label: [] for label, _ in OPTIONS}
    frames = {}
    build_frame_store(root, BASELINE[1], workers=workers, progress=False)  # warm-up, not timed
    for rep in range(reps):
        for label, spec in OPTIONS if rep % 2 == 0 else OPTIONS[::-1]:
            shutil.rmtree(frame_store_path(root, spec), ignore_errors=True)
            start = time.perf_counter()
            build_frame_store(root, spec, workers=workers, progress=False)
            times[label].append(time.perf_counter() - start)
            group = zarr.open_group(frame_store_path(root, spec), mode="r")
            shapes = [group[split]["frames"].shape for split in ("train", "test")]
            frames[label] = sum(math.prod(shape[:-3]) for shape in shapes)  # [N, T] or [F]
    return times, frames


def denoise_times(root: Path, samples: int, filter_us: int) -> tuple[int, float, float]:
    """(events, seconds of dvsgkit's filter, seconds of Tonic's) on the same samples."""
    from tonic.functional import denoise_numpy

    with EventCache(event_cache_path(root)) as cache:
        events = [cache.sample("train", i) for i in range(samples)]
    ours = theirs = 0.0
    for ev in events:
        start = time.perf_counter()
        keep = denoise_keep(ev["x"], ev["y"], ev["t"], filter_us)
        ours += time.perf_counter() - start
        tev = np.empty(ev.size, TONIC_EVENT_DTYPE)
        for name in TONIC_EVENT_DTYPE.names:
            tev[name] = ev[name]
        start = time.perf_counter()
        kept = denoise_numpy(tev, filter_us)
        theirs += time.perf_counter() - start
        if not np.array_equal(tev[keep], kept):
            raise AssertionError("dvsgkit's denoise kept other events than Tonic's")
    return sum(e.size for e in events), ours, theirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-trials", type=int, default=8)
    ap.add_argument("--test-trials", type=int, default=2)
    ap.add_argument("--events-per-sample", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=1, help="build processes")
    ap.add_argument("--reps", type=int, default=3, help="builds of each option")
    ap.add_argument("--denoise-samples", type=int, default=4, help="samples for the Tonic row")
    ap.add_argument("--root", type=Path, default=None, help="reuse a dataset root")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir="data" if Path("data").is_dir() else None) as tmp:
        root = args.root or Path(tmp)
        if not event_cache_path(root).exists():
            write_synthetic_dataset(root, train_trials=args.train_trials,
                                    test_trials=args.test_trials,
                                    events_per_sample=args.events_per_sample)  # fmt: skip
            build_event_cache(root, workers=args.workers, progress=False)
        with EventCache(event_cache_path(root)) as cache:
            n = sum(cache.num_samples(s) for s in ("train", "test"))
            events = sum(int(cache.offsets(s)[-1]) for s in ("train", "test"))
        print(f"{n} samples, {events / 1e6:.1f} M events; workers {args.workers}, "
              f"reps {args.reps}; load average {os.getloadavg()[0]:.2f} (cores: "
              f"{os.cpu_count()})")  # fmt: skip
        times, frames = build_times(root, args.workers, args.reps)
        base = statistics.median(times[BASELINE[0]])
        per_frame = base / frames[BASELINE[0]]
        print(f"\n| option | frames stored | build (median of {args.reps}, range) | ratio to "
              "`-T 16` | per frame, ratio |")  # fmt: skip
        print("|---|---|---|---|---|")
        for label, values in times.items():
            median = statistics.median(values)
            print(f"| `{label}` | {frames[label]:,} | {median:.2f} s ({min(values):.2f}-"
                  f"{max(values):.2f}) | {median / base:.2f}x | "
                  f"{median / frames[label] / per_frame:.2f}x |")  # fmt: skip
        count, ours, theirs = denoise_times(root, args.denoise_samples, 10_000)
        print(
            f"\n| denoise 10ms, {args.denoise_samples} samples, {count / 1e6:.2f} M events | "
            "dvsgkit | Tonic denoise_numpy | speed-up |"
        )
        print("|---|---|---|---|")
        print(f"| same events, same result | {ours * 1e3:.1f} ms | {theirs * 1e3:.0f} ms | "
              f"{theirs / ours:.0f}x |")  # fmt: skip
        print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
