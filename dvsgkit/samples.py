"""Recordings + labels -> labelled samples, exactly as SpikingJelly's split_aedat_files_to_np."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dvsgkit.constants import DATASET_DIR, EVENT_DTYPE, SPLITS, TRIALS_FILES
from dvsgkit.io.aedat import DEFAULT_CHUNK_EVENTS, iter_events
from dvsgkit.io.labels import labels_path_for, read_labels, read_trials


@dataclass(frozen=True)
class Recording:
    """One recording of a split: `trial` is its stem, e.g. "user01_natural"."""

    split: str
    trial: str
    aedat: Path
    labels: Path


def dataset_dir(root: str | os.PathLike[str]) -> Path:
    """ROOT/extract/DvsGesture, where the recordings, labels and trials lists live."""
    return Path(root) / "extract" / DATASET_DIR


def list_recordings(folder: str | os.PathLike[str], split: str) -> list[Recording]:
    """The recordings of `split`, in the order of its trials list; every file must exist."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = Path(folder)
    trials = folder / TRIALS_FILES[split]
    recordings = []
    for name in read_trials(trials):
        aedat = folder / name
        labels = labels_path_for(aedat)
        for needed in (aedat, labels):
            if not needed.is_file():
                raise FileNotFoundError(
                    f"{trials} names {name!r}, but {needed} does not exist; restore the file "
                    "or remove the name from the trials list"
                )
        recordings.append(Recording(split, aedat.stem, aedat, labels))
    return recordings


def cut(events: np.ndarray, windows: np.ndarray) -> list[np.ndarray]:
    """Cut EVENT_DTYPE events into one sample per window: the events with start <= t < end, in
    their recorded order, timestamps kept absolute. Windows (WINDOW_DTYPE) may overlap."""
    return cut_chunks([events], windows)


def cut_chunks(chunks: Iterable[np.ndarray], windows: np.ndarray) -> list[np.ndarray]:
    """`cut` over a recording given as consecutive EVENT_DTYPE chunks (see `iter_events`), so
    that only one chunk of the recording is held besides the samples themselves."""
    pieces: list[list[np.ndarray]] = [[] for _ in range(len(windows))]
    starts, ends = windows["start"], windows["end"]
    for chunk in chunks:
        t = chunk["t"]
        if len(t) == 0:
            continue
        hit = (starts <= t.max()) & (ends > t.min())  # skip windows outside this chunk
        if not hit.any():
            continue
        if np.all(t[1:] >= t[:-1]):  # recorded order is time order: binary search
            lo = np.searchsorted(t, starts, side="left")
            hi = np.searchsorted(t, ends, side="left")
            for i in np.flatnonzero(hit):
                pieces[i].append(chunk[lo[i] : hi[i]])
        else:  # timestamps go back somewhere: a mask keeps the recorded order, like the reference
            for i in np.flatnonzero(hit):
                pieces[i].append(chunk[(t >= starts[i]) & (t < ends[i])])
    # A sample inside one chunk stays a view of it: the chunk is mostly samples anyway.
    return [
        np.concatenate(p) if len(p) > 1 else (p[0] if p else np.empty(0, EVENT_DTYPE))
        for p in pieces
    ]


def cut_recording(
    recording: Recording, *, chunk_events: int = DEFAULT_CHUNK_EVENTS
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Read one recording and its labels; return (windows WINDOW_DTYPE [12], samples)."""
    windows = read_labels(recording.labels)
    samples = cut_chunks(iter_events(recording.aedat, chunk_events=chunk_events), windows)
    return windows, samples
