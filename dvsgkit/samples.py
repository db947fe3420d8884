"""Recordings + labels -> labelled samples, exactly as SpikingJelly's split_aedat_files_to_np."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dvsgkit.constants import DATASET_DIR, EVENT_DTYPE, EXTRACT_DIR, SPLITS, TRIALS_FILES
from dvsgkit.io.aedat import DEFAULT_CHUNK_EVENTS, iter_events, iter_words, unpack_data
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
    return Path(root) / EXTRACT_DIR / DATASET_DIR


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


def _selectors(t: np.ndarray, windows: np.ndarray) -> list[tuple[int, slice | np.ndarray]]:
    """For one chunk's timestamps: (window index, slice or mask of the chunk's events with
    start <= t < end), for every window that the chunk reaches."""
    if len(t) == 0:
        return []
    starts, ends = windows["start"], windows["end"]
    hit = np.flatnonzero((starts <= t.max()) & (ends > t.min()))
    if len(hit) == 0:
        return []
    if np.all(t[1:] >= t[:-1]):  # recorded order is time order: binary search
        lo = np.searchsorted(t, starts[hit], side="left")
        hi = np.searchsorted(t, ends[hit], side="left")
        return [(i, slice(a, b)) for i, a, b in zip(hit, lo, hi, strict=True)]
    # Timestamps go back somewhere: masks keep the recorded order, like the reference.
    return [(i, (t >= starts[i]) & (t < ends[i])) for i in hit]


def cut(events: np.ndarray, windows: np.ndarray) -> list[np.ndarray]:
    """Cut EVENT_DTYPE events into one sample per window: the events with start <= t < end, in
    their recorded order, timestamps kept absolute. Windows (WINDOW_DTYPE) may overlap."""
    return cut_chunks([events], windows)


def cut_chunks(chunks: Iterable[np.ndarray], windows: np.ndarray) -> list[np.ndarray]:
    """`cut` over a recording given as consecutive EVENT_DTYPE chunks (see `iter_events`), so
    that only one chunk of the recording is held besides the samples themselves."""
    pieces: list[list[np.ndarray]] = [[] for _ in range(len(windows))]
    for chunk in chunks:
        for i, sel in _selectors(chunk["t"], windows):
            pieces[i].append(chunk[sel])
    return [np.concatenate(p) if p else np.empty(0, EVENT_DTYPE) for p in pieces]


def cut_recording(
    recording: Recording, *, chunk_events: int = DEFAULT_CHUNK_EVENTS
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Read one recording and its labels; return (windows WINDOW_DTYPE [rows], samples)."""
    windows = read_labels(recording.labels)
    samples = cut_chunks(iter_events(recording.aedat, chunk_events=chunk_events), windows)
    return windows, samples


def _empty_columns(n: int) -> dict[str, np.ndarray]:
    return {name: np.empty(n, dtype=EVENT_DTYPE[name]) for name in EVENT_DTYPE.names}


def cut_recording_columns(
    recording: Recording,
    *,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    alloc: Callable[[int], dict[str, np.ndarray]] = _empty_columns,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """`cut_recording` in the form the event cache stores: (windows, lengths int64 [rows],
    {"t", "x", "y", "p"} columns of all samples concatenated in row order). Cuts the undecoded
    words and decodes only the events that land in a sample. `alloc(n)` provides the output
    columns (e.g. in memory shared with another process)."""
    windows = read_labels(recording.labels)
    t_pieces: list[list[np.ndarray]] = [[] for _ in range(len(windows))]
    d_pieces: list[list[np.ndarray]] = [[] for _ in range(len(windows))]
    for t, data in iter_words(recording.aedat, chunk_events=chunk_events):
        for i, sel in _selectors(t, windows):
            t_pieces[i].append(t[sel])
            d_pieces[i].append(data[sel])
    lengths = np.array([sum(len(p) for p in pieces) for pieces in t_pieces], dtype=np.int64)
    columns = alloc(int(lengths.sum()))
    t_all = [p for pieces in t_pieces for p in pieces]
    d_all = [p for pieces in d_pieces for p in pieces]
    if t_all:
        np.concatenate(t_all, out=columns["t"])
        columns["x"][:], columns["y"][:], columns["p"][:] = unpack_data(np.concatenate(d_all))
    return windows, lengths, columns
