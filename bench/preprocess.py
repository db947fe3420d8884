"""Benchmark `dvsgkit events` against SpikingJelly 0.0.0.0.14's reader on the same AEDAT files.

Run from the bench venv (it has spikingjelly):

    .venv-bench/bin/python bench/preprocess.py --recordings 6 --events-per-sample 100000

Full size (the real set's shape: 122 recordings, ~600 M events, ~5 GB; takes a while):

    .venv-bench/bin/python bench/preprocess.py --recordings 122 --events-per-sample 360000

What the Fletcher-32 checksums of events.h5 cost (builds with and without the filter,
alternating, on the same files; the reference is skipped):

    .venv/bin/python bench/preprocess.py --recordings 40 --events-per-sample 360000 \\
        --fletcher32-repeats 3 --reference-recordings 0

It writes a synthetic dataset (temporary unless --dir), times `dvsgkit events` end to end as a
subprocess (wall time, peak RSS of the process tree), then times SpikingJelly's
`load_aedat_v3` + `DVS128Gesture.split_aedat_files_to_np` on the first --reference-recordings
recordings (it parses one event at a time: the whole set would take ~30 min), writing its npz
files to a temporary folder. Rates are events in the .aedat files per second, for both tools.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from dvsgkit.constants import SPLITS
from dvsgkit.io.aedat_format import open_map, parse_header, walk_packets
from dvsgkit.samples import Recording, dataset_dir, list_recordings
from dvsgkit.synth import write_synthetic_dataset

REAL_TRAIN, REAL_TEST = 98, 24


def count_events(path: Path) -> int:
    """Polarity events in a file, from its packet headers (no decoding)."""
    with open(path, "rb") as f, open_map(f, path) as mm:
        packets, _ = walk_packets(mm, parse_header(mm, path).data_offset, path, None)
        return sum(number for _, number, _, _ in packets)


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


# The build as `dvsgkit events` runs it, or without its Fletcher-32 filter and seals.
NO_FLETCHER32 = (
    "from dvsgkit.eventcache import write as event_writer\n"
    "event_writer.FLETCHER32 = False\n"
    "event_writer.integrity.seal = lambda f, splits: None\n"
)


def run_dvsgkit(root: Path, workers: int, fletcher32: bool = True) -> tuple[float, int, int, float]:
    """(seconds, peak RSS of the process tree sampled every 20 ms, peak RSS of the largest
    single process from getrusage, CPU seconds of the tree: user + system) of `dvsgkit events`
    on a fresh cache (`fletcher32` False: without the checksums)."""
    args = ["events", "--root", str(root), "--workers", str(workers), "--no-progress"]
    if fletcher32:
        cmd = [sys.executable, "-m", "dvsgkit_cli.main", *args]
    else:
        code = f"{NO_FLETCHER32}from dvsgkit_cli.main import cli\ncli({args!r})"
        cmd = [sys.executable, "-c", code]
    peak = 0
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if code != 0:
        raise SystemExit(f"dvsgkit events failed with exit code {code}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, peak, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime


def time_checks(path: Path, total: int) -> None:
    """Seconds of the seal check (part of every up-to-date check and `dvsgkit info`) and of
    EventCache.verify (`dvsgkit info --verify`: reads everything) on the cache just built."""
    from dvsgkit.eventcache.read import EventCache

    with EventCache(path) as cache:
        start = time.perf_counter()
        cache.check_sealed()
        sealed = time.perf_counter() - start
        start = time.perf_counter()
        problems = cache.verify()
        verified = time.perf_counter() - start
    print(f"seal check {sealed * 1e3:.0f} ms; verify {verified:.2f} s "
          f"({total / verified / 1e6:.0f} M events/s, {len(problems)} problems)")  # fmt: skip


def compare_fletcher32(root: Path, workers: int, repeats: int, total: int) -> None:
    """Alternate builds with and without the checksums; print the medians and their ratio."""
    times: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    sizes = {}
    for _ in range(repeats):
        for on in (False, True):
            (root / "events.h5").unlink(missing_ok=True)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            seconds, _, _, _ = run_dvsgkit(root, workers, fletcher32=on)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            times[on].append(seconds)
            cpu[on].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            sizes[on] = (root / "events.h5").stat().st_size
    for on in (False, True):
        print(f"{'with' if on else 'without'} Fletcher-32: wall "
              f"{', '.join(f'{t:.2f}' for t in times[on])} s (median {np.median(times[on]):.2f}), "
              f"CPU median {np.median(cpu[on]):.2f} s, {total / np.median(times[on]) / 1e6:.1f} "
              f"M events/s, cache {sizes[on] / 1e6:.1f} MB")  # fmt: skip
    print(f"Fletcher-32 cost: wall {np.median(times[True]) / np.median(times[False]) - 1:+.1%}, "
          f"CPU {np.median(cpu[True]) / np.median(cpu[False]) - 1:+.1%}, "
          f"size {sizes[True] / sizes[False] - 1:+.2%}")  # fmt: skip


def run_reference(recordings: list[Recording]) -> float:
    """Seconds SpikingJelly takes to read and split these recordings (npz into a temp dir)."""
    from spikingjelly.datasets.dvs128_gesture import DVS128Gesture

    out = Path(tempfile.mkdtemp(prefix="sj-split-"))
    try:
        for label in range(11):
            (out / str(label)).mkdir()
        start = time.perf_counter()
        for rec in recordings:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per sample
                DVS128Gesture.split_aedat_files_to_np(
                    rec.trial, str(rec.aedat), str(rec.labels), str(out)
                )
        return time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=122, help="train + test recordings")
    parser.add_argument("--events-per-sample", type=int, default=360_000)
    parser.add_argument(
        "--reference-recordings",
        type=int,
        default=2,
        help="recordings SpikingJelly parses (0: skip the reference)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, help="dataset root to use and keep (default: temp)")
    parser.add_argument(
        "--fletcher32-repeats",
        type=int,
        default=0,
        help="also time builds without the Fletcher-32 filter, alternating, this many pairs",
    )
    args = parser.parse_args()
    if args.recordings < 2:
        parser.error("--recordings must be >= 2 (one per split at least)")

    root = args.dir or Path(tempfile.mkdtemp(prefix="dvsgkit-bench-"))
    try:
        test = max(1, round(args.recordings * REAL_TEST / (REAL_TRAIN + REAL_TEST)))
        train = args.recordings - test
        folder = dataset_dir(root)
        if not (folder / "SYNTHETIC.txt").is_file() or args.dir is None:
            start = time.perf_counter()
            write_synthetic_dataset(root, seed=args.seed, train_trials=train, test_trials=test,
                                    events_per_sample=args.events_per_sample)  # fmt: skip
            print(f"generated {train} + {test} recordings in {time.perf_counter() - start:.1f} s")
        recs = [r for split in SPLITS for r in list_recordings(folder, split)]
        counts = np.array([count_events(r.aedat) for r in recs])
        aedat_bytes = sum(r.aedat.stat().st_size for r in recs)
        total = int(counts.sum())
        print(f"dataset: {len(recs)} recordings, {total:,} events, {aedat_bytes / 1e9:.2f} GB")

        (root / "events.h5").unlink(missing_ok=True)
        seconds, tree_peak, largest, cpu = run_dvsgkit(root, args.workers)
        cache = (root / "events.h5").stat().st_size
        ours = total / seconds
        print(f"dvsgkit events (CLI, {args.workers} workers): {seconds:.2f} s, "
              f"{ours / 1e6:.1f} M events/s, peak RSS {tree_peak / 1e9:.2f} GB (process tree), "
              f"{largest / 1e9:.2f} GB (largest process); CPU {cpu:.1f} s = "
              f"{cpu / total * 1e9:.1f} ns/event over all processes")  # fmt: skip
        print(f"cache: {cache / 1e9:.3f} GB = {cache / aedat_bytes:.2f} x the .aedat size, "
              f"{cache / total:.2f} bytes/event")  # fmt: skip
        time_checks(root / "events.h5", total)
        if args.fletcher32_repeats:
            compare_fletcher32(root, args.workers, args.fletcher32_repeats, total)

        m = min(args.reference_recordings, len(recs))
        if m == 0:
            return
        try:
            ref_seconds = run_reference(recs[:m])
        except ImportError as exc:
            print(f"reference skipped: {exc} (run this script with .venv-bench/bin/python)")
            return
        ref = int(counts[:m].sum()) / ref_seconds
        print(f"SpikingJelly 0.0.0.0.14 load_aedat_v3 + split_aedat_files_to_np on the first {m} "
              f"recordings ({int(counts[:m].sum()):,} events): {ref_seconds:.1f} s, "
              f"{ref / 1e6:.2f} M events/s")  # fmt: skip
        print(f"ratio dvsgkit / SpikingJelly: {ours / ref:.0f}x")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
