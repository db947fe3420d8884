"""Synthetic DvsGesture-shaped recordings (learnable moving patterns) for demos and tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dvsgkit.constants import (
    CLASS_KEYS,
    DATASET_DIR,
    EVENT_DTYPE,
    EXTRACT_DIR,
    MAPPING_NAME,
    NUM_CLASSES,
    SENSOR_HEIGHT,
    SENSOR_WIDTH,
    TEST_TRIALS_FILE,
    TRAIN_TRIALS_FILE,
)
from dvsgkit.errors import InputError, InTheWay, storage_errors
from dvsgkit.fs import atomic_dir, sweep, write_text
from dvsgkit.fs.lock import build_lock, lock_of, to_stderr
from dvsgkit.io.aedat_writer import AedatWriter
from dvsgkit.io.labels import WINDOW_DTYPE, write_labels

# write_synthetic_dataset's defaults (and `dvsgkit synth`'s): a small set that trains in minutes.
DEFAULT_SEED = 0
DEFAULT_TRAIN_TRIALS = 4
DEFAULT_TEST_TRIALS = 2
DEFAULT_EVENTS_PER_SAMPLE = 20_000
LIGHTINGS = ("fluorescent", "fluorescent_led", "lab", "led", "natural")
FIRST_TEST_USER = 24  # the real test split holds users 24..29
MARKER = "SYNTHETIC.txt"  # marks a folder this module may replace
ROW_CLASSES = (*range(1, NUM_CLASSES + 1), 8)  # 12 rows per recording: arm roll (8) twice
NOISE_FRACTION = 0.1  # share of a window's events that are uniform background noise
POLARITY_FLIP = 0.15  # share of gesture events whose polarity disagrees with the motion
IDLE_DENSITY = 0.2  # events per microsecond outside the windows, relative to inside
CHUNK_EVENTS = 1 << 20  # generation chunk: memory stays bounded at any events_per_sample
# Per class: cycles of the movement per labelled window.
CYCLES = (4, 5, 5, 3, 3, 3, 3, 6, 4, 5, 8)


def trial_names(train_trials: int, test_trials: int) -> tuple[list[str], list[str]]:
    """Stems like the real ones: train users from 01, test users from 24 (or after the last
    train user), five lighting conditions per user."""

    def names(count: int, first_user: int) -> list[str]:
        return [f"user{first_user + k // 5:02d}_{LIGHTINGS[k % 5]}" for k in range(count)]

    train = names(train_trials, 1)
    last_train_user = (train_trials - 1) // 5 + 1 if train_trials else 0
    return train, names(test_trials, max(FIRST_TEST_USER, last_train_user + 1))


def _path(label: int, theta: np.ndarray, blob: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """Centre [2, n] (x, y in pixels, y down) of the moving blob for class `label` at phase
    `theta` (radians); `blob` (0/1) picks one of two hands; `jitter` shifts the whole gesture."""
    s, c = np.sin(theta), np.cos(theta)
    side = np.where(blob == 0, -1.0, 1.0)
    if label == 0:  # hand clapping: two hands meet in the middle and part, chest high
        x, y = 64 + side * (8 + 16 * (1 + c) / 2), np.full_like(theta, 52.0)
    elif label in (1, 2):  # right / left hand wave: side to side, high up
        x, y = (88.0 if label == 1 else 40.0) + 18 * s, 38 + 4 * c
    elif label in (3, 4, 5, 6):  # right / left arm, clockwise / counter-clockwise circles
        cx = 86.0 if label in (3, 4) else 42.0
        sense = 1.0 if label in (3, 5) else -1.0  # y points down: +theta turns clockwise
        x, y = cx + 22 * c, 64 + 22 * sense * s
    elif label == 7:  # arm roll: two hands circling each other in front of the body
        x, y = 64 + side * 10 * c, 82 + side * 10 * s
    elif label == 8:  # air drums: two hands beating up and down in turn, low
        x, y = 64 + side * 30, 96 + side * 12 * s
    elif label == 9:  # air guitar: one hand strums a diagonal, the other holds the neck
        x = np.where(blob == 0, 36.0, 76 + 12 * s)
        y = np.where(blob == 0, 58.0, 86 + 12 * s)
    else:  # other gestures: the hand jumps between eight random spots
        spots = jitter[2:].reshape(2, -1)  # [2, 8] spot centres
        k = (theta / (2 * np.pi) * 2).astype(np.int64) % spots.shape[1]
        x, y = spots[0, k], spots[1, k]
    return np.stack([x + jitter[0], y + jitter[1]])


def _window_events(
    rng: np.random.Generator, label: int, start: int, end: int, n: int, noise: float
) -> Iterator[np.ndarray]:
    """n events in [start, end) of class `label` (label -1: background noise only), in time
    order, yielded in chunks of CHUNK_EVENTS."""
    jitter = np.concatenate([rng.normal(0, 4, 2), rng.uniform(20, 108, 16)])
    phase0, sigma = rng.uniform(0, 2 * np.pi), rng.uniform(3.5, 5.5)
    cycles = CYCLES[label] * rng.uniform(0.9, 1.1) if label >= 0 else 0.0
    chunks = max(1, -(-n // CHUNK_EVENTS))
    bounds = np.linspace(start, end, chunks + 1)
    for k in range(chunks):
        m = n // chunks + (k < n % chunks)
        # Poisson-like arrivals: cumulated exponential gaps scaled onto this chunk's span.
        gaps = np.cumsum(rng.exponential(size=m + 1))
        t = (bounds[k] + gaps[:-1] / gaps[-1] * (bounds[k + 1] - bounds[k])).astype(np.int64)
        ev = np.empty(m, dtype=EVENT_DTYPE)
        ev["t"] = t
        if label >= 0:
            theta = phase0 + 2 * np.pi * cycles * (t - start) / max(end - start, 1)
            blob = rng.integers(0, 2, m)
            centre = _path(label, theta, blob, jitter)
            velocity = _path(label, theta + 1e-2, blob, jitter) - centre
            xy = centre + rng.normal(0, sigma, (2, m))
            # Polarity follows the direction of motion (ON while the hand moves right or up on
            # the sensor, mostly), so that the rotation sense shows in a single frame even at
            # low resolution; a real DVS gives ON at the leading edge, which is subtler.
            toward = velocity[0] - velocity[1]  # y points down: up is -y
            p = (toward > 0) ^ (rng.random(m) < POLARITY_FLIP)
            p[toward == 0] = rng.integers(0, 2, int((toward == 0).sum())).astype(bool)
            noisy = rng.random(m) < noise
        else:
            xy, p, noisy = np.empty((2, m)), np.zeros(m, bool), np.ones(m, bool)
        k_noise = int(noisy.sum())
        xy[:, noisy] = rng.uniform(0, [[SENSOR_WIDTH], [SENSOR_HEIGHT]], (2, k_noise))
        p[noisy] = rng.integers(0, 2, k_noise).astype(bool)
        ev["x"] = np.clip(xy[0], 0, SENSOR_WIDTH - 1)
        ev["y"] = np.clip(xy[1], 0, SENSOR_HEIGHT - 1)
        ev["p"] = p
        yield ev


def write_recording(
    folder: Path, stem: str, rng: np.random.Generator, events_per_sample: int
) -> np.ndarray:
    """Write `stem.aedat` and `stem_labels.csv` into `folder`; return the windows written."""
    order = rng.permutation(len(ROW_CLASSES))
    windows = np.zeros(len(order), dtype=WINDOW_DTYPE)
    t = int(rng.integers(1_000_000, 3_000_000))  # a lead-in before the first gesture
    plan = []  # (label or -1 for idle, start, end, events) in time order
    for row, i in enumerate(order):
        gap, duration = int(rng.integers(300_000, 2_000_000)), int(rng.integers(5, 8) * 1_000_000)
        n = max(1, int(events_per_sample * rng.uniform(0.8, 1.2)))
        plan.append((-1, t, t + gap, max(1, int(n * IDLE_DENSITY * gap / duration))))
        t += gap
        windows[row] = (ROW_CLASSES[i] - 1, t, t + duration, row)
        plan.append((ROW_CLASSES[i] - 1, t, t + duration, n))
        t += duration
    plan.append((-1, t, t + 1_000_000, max(1, int(events_per_sample * IDLE_DENSITY / 6))))
    start_time = f"2017-01-{1 + int(rng.integers(0, 28)):02d} 10:00:00 (TZ+0000)"
    with AedatWriter(folder / f"{stem}.aedat", start_time=start_time) as writer:
        for label, start, end, n in plan:
            for events in _window_events(rng, label, start, end, n, NOISE_FRACTION):
                writer.write(events)
    write_labels(folder / f"{stem}_labels.csv", windows)
    return windows


def write_synthetic_dataset(
    root: Path,
    *,
    seed: int = DEFAULT_SEED,
    train_trials: int = DEFAULT_TRAIN_TRIALS,
    test_trials: int = DEFAULT_TEST_TRIALS,
    events_per_sample: int = DEFAULT_EVENTS_PER_SAMPLE,
) -> Path:
    """Write ROOT/extract/DvsGesture/ in the real layout (`userNN_<lighting>.aedat`, CRLF
    `*_labels.csv` with 12 rows, both trials lists, gesture_mapping.csv beside the folder);
    return the folder. Deterministic per seed. The folder is built under a temporary name and
    swapped in when complete; an existing folder is replaced only if this module wrote it."""
    for name, value, low in (
        ("train_trials", train_trials, 1),
        ("test_trials", test_trials, 1),
        ("events_per_sample", events_per_sample, 1),
    ):
        if value < low:
            raise InputError(f"{name} must be >= {low}, got {value}")
    extract = Path(root) / EXTRACT_DIR
    final = extract / DATASET_DIR
    if final.exists() and not (final / MARKER).is_file():
        raise InTheWay(
            f"{final} exists and was not written by 'dvsgkit synth' (no {MARKER}); "
            "it may be the real dataset: choose another --root"
        )
    # Built under a temporary name and swapped in whole: never half a dataset under the real
    # name, and on any error (Ctrl-C too) the partial folder is deleted.
    with storage_errors(extract, "write", "give another --root, or free some space"):
        extract.mkdir(parents=True, exist_ok=True)
        with build_lock(lock_of(extract), what=str(extract), doing="writing", notify=to_stderr):
            sweep(extract)  # what killed writes left
            with atomic_dir(final) as partial:
                train, test = trial_names(train_trials, test_trials)
                for split, stems in enumerate((train, test)):
                    for k, stem in enumerate(stems):
                        rng = np.random.default_rng([seed, split, k])
                        write_recording(partial, stem, rng, events_per_sample)
                for file, stems in ((TRAIN_TRIALS_FILE, train), (TEST_TRIALS_FILE, test)):
                    # Names one a line, then a blank line, as in the real lists.
                    (partial / file).write_text("".join(f"{s}.aedat\n" for s in stems) + "\n")
                (partial / MARKER).write_text(
                    f"Synthetic DvsGesture-shaped data written by dvsgkit: seed={seed}, "
                    f"train_trials={train_trials}, test_trials={test_trials}, "
                    f"events_per_sample={events_per_sample}\n"
                )
                mapping = "".join(f"{key},{i + 1}\r\n" for i, key in enumerate(CLASS_KEYS))
                write_text(extract / MAPPING_NAME, "action,label\r\n" + mapping)
    return final
