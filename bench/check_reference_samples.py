"""Check that events.h5 holds exactly SpikingJelly 0.0.0.0.14's samples, sample for sample.

Run from the bench venv (it has spikingjelly):

    .venv-bench/bin/python bench/check_reference_samples.py            # synthetic set + edge cases
    .venv-bench/bin/python bench/check_reference_samples.py --root data  # a real dataset root

Without --root it writes a small synthetic dataset to a temporary folder and adds the cases the
real files hold or could hold: labels rows out of order with a repeated class and overlapping
windows (user22_led's fault), LF line endings, a recording whose timestamps pass 2^31 (so
eventTSOverflow is used), and skipped non-polarity packets. It then runs SpikingJelly's
`DVS128Gesture.split_aedat_files_to_np` on every recording (npz files in a temporary folder),
builds events.h5 with dvsgkit and compares every sample: SpikingJelly's `{label}/{stem}_{k}.npz`
is dvsgkit's sample of that recording whose row is the k-th of that label.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from dvsgkit.constants import SPLITS
from dvsgkit.eventcache.build import build_event_cache
from dvsgkit.eventcache.read import EventCache
from dvsgkit.io.aedat import read_events
from dvsgkit.io.aedat_writer import AedatWriter, packet_header
from dvsgkit.io.labels import WINDOW_DTYPE, labels_path_for, read_labels, write_labels
from dvsgkit.samples import dataset_dir, list_recordings
from dvsgkit.synth import write_synthetic_dataset


def add_edge_cases(root: Path) -> None:
    """Rewrite three synthetic recordings so that they hold the awkward cases."""
    folder = dataset_dir(root)
    recs = list_recordings(folder, "train")
    # 1. Rows out of order, a class repeated three times, overlapping windows; LF endings.
    w = read_labels(recs[0].labels)
    extra = np.array([(7, w["start"][3], w["end"][5], 0), (2, w["start"][4] - 10, w["end"][4], 0)],
                     dtype=WINDOW_DTYPE)  # fmt: skip
    shuffled = np.concatenate([w[::-1], extra])
    shuffled["row"] = np.arange(len(shuffled))
    write_labels(recs[0].labels, shuffled, crlf=False)
    # 2. Timestamps past 2^31: the same events shifted, written with eventTSOverflow.
    ev = read_events(recs[1].aedat)
    shift = (1 << 31) - int(np.median(ev["t"]))
    ev["t"] += shift
    with AedatWriter(recs[1].aedat) as writer:
        writer.write(ev)
    w = read_labels(recs[1].labels)
    w["start"] += shift
    w["end"] += shift
    write_labels(recs[1].labels, w)
    # 3. Non-polarity packets between polarity packets, skipped by their declared size.
    ev = read_events(recs[2].aedat)
    with AedatWriter(recs[2].aedat) as writer:
        half = len(ev) // 2
        writer.write_raw(packet_header(0, 8, 4) + bytes(32))
        writer.write(ev[:half])
        writer.write_raw(packet_header(2, 12, 3) + bytes(36))
        writer.write(ev[half:])


def spikingjelly_samples(root: Path, out: Path) -> None:
    from spikingjelly.datasets.dvs128_gesture import DVS128Gesture

    for split in SPLITS:
        for label in range(11):
            (out / split / str(label)).mkdir(parents=True)
        for rec in list_recordings(dataset_dir(root), split):
            with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per sample
                DVS128Gesture.split_aedat_files_to_np(
                    rec.trial, str(rec.aedat), str(labels_path_for(rec.aedat)), str(out / split)
                )


def compare(root: Path, reference: Path) -> int:
    """Number of mismatches, printing each."""
    bad = checked = 0
    with EventCache(build_event_cache(root, progress=False)) as cache:
        for split in SPLITS:
            labels, trials, rows = cache.labels(split), cache.trials(split), cache.rows(split)
            seen: dict[tuple[str, int], int] = {}
            for i, (label, trial, row) in enumerate(zip(labels, trials, rows, strict=True)):
                k = seen.get((trial, label), 0)
                seen[(trial, label)] = k + 1
                ref = np.load(reference / split / str(label) / f"{trial}_{k}.npz")
                ours = cache.sample(split, i)
                same = all(np.array_equal(ours[f], ref[f]) for f in ("t", "x", "y", "p"))
                checked += 1
                if not same:
                    bad += 1
                    print(f"MISMATCH {split} sample {i}: {trial} row {row} label {label}")
            files = sum(1 for _ in (reference / split).rglob("*.npz"))
            if files != len(labels):
                bad += 1
                print(
                    f"MISMATCH {split}: SpikingJelly wrote {files} samples, dvsgkit {len(labels)}"
                )
    print(f"compared {checked} samples: {'all identical' if bad == 0 else f'{bad} mismatches'}")
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="dataset root (default: synthetic, temporary)")
    parser.add_argument("--events-per-sample", type=int, default=3000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dvsgkit-ref-"))
    try:
        root = args.root
        if root is None:
            root = tmp / "root"
            write_synthetic_dataset(root, seed=7, train_trials=4, test_trials=2,
                                    events_per_sample=args.events_per_sample)  # fmt: skip
            add_edge_cases(root)
        spikingjelly_samples(root, tmp / "sj")
        sys.exit(1 if compare(root, tmp / "sj") else 0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
