"""Recordings + labels -> labelled samples, exactly as SpikingJelly's split_aedat_files_to_np."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.constants import DATASET_DIR, EVENT_DTYPE, EXTRACT_DIR, SPLITS, TRIALS_FILES
from dvsgkit.errors import InputError, NotFound
from dvsgkit.io.aedat import (
    DEFAULT_CHUNK_EVENTS,
    AedatError,
    ReadBuffers,
    first_off_sensor,
    iter_events,
    iter_words,
    max_xy,
    unpack_into,
    xy_bound,
)
from dvsgkit.io.labels import labels_path_for, read_labels, read_trials_numbered, recording_key


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
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    folder = Path(folder)
    trials = folder / TRIALS_FILES[split]
    recordings = []
    for _, name in read_trials_numbered(trials):
        aedat = folder / name
        labels = labels_path_for(aedat)
        for needed in (aedat, labels):
            if not needed.is_file():
                raise NotFound(
                    f"{trials} names {name!r}, but {needed} does not exist; restore the file "
                    "or remove the name from the trials list"
                )
        recordings.append(Recording(split, aedat.stem, aedat, labels))
    return recordings


def list_all_recordings(folder: str | os.PathLike[str]) -> list[Recording]:
    """The recordings of every split, split by split in SPLITS order. A recording listed in two
    splits' trials lists (test data leaking into training) is refused with a ValueError naming
    both files, their lines and the recording, before any file is read beyond the lists."""
    folder = Path(folder)
    seen: dict[str, tuple[Path, int, str]] = {}
    for split in SPLITS:
        trials = folder / TRIALS_FILES[split]
        for lineno, name in read_trials_numbered(trials):
            key = recording_key(folder, name)  # `./NAME`, `sub/../NAME`, a link: one recording
            if key in seen:
                other, other_line, other_name = seen[key]
                spelled = "" if name == other_name else f" as {other_name!r} (both name {key})"
                raise InputError(
                    f"{trials}, line {lineno}: {name!r} is also listed in {other}, line "
                    f"{other_line}{spelled}; a recording belongs to one split only: remove it "
                    "from one list"
                )
            seen[key] = (trials, lineno, name)
    return [rec for split in SPLITS for rec in list_recordings(folder, split)]


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


class CutBuffers:
    """Memory `cut_recording_columns` reuses from one recording to the next: the reader's
    buffers and the staging area where a recording's sample events wait, undecoded, until
    every window's length is known. Reuse spares the kernel faulting in fresh pages each time.
    One cut at a time per instance."""

    def __init__(self) -> None:
        self.read = ReadBuffers()
        self.t = np.empty(0, np.int64)
        self.data = np.empty(0, np.uint32)
        self.used = 0

    def append(self, t: np.ndarray, data: np.ndarray) -> int:
        """Copy (t, data) after the staged events; return where they start."""
        start, n = self.used, len(t)
        if start + n > len(self.t):
            size = max(start + n, len(self.t) * 3 // 2)
            self.t = np.concatenate([self.t[:start], np.empty(size - start, np.int64)])
            self.data = np.concatenate([self.data[:start], np.empty(size - start, np.uint32)])
        self.t[start : start + n] = t
        self.data[start : start + n] = data
        self.used = start + n
        return start


def cut_recording_columns(
    recording: Recording,
    *,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    alloc: Callable[[int], dict[str, np.ndarray]] = _empty_columns,
    sensor: tuple[int, int] | None = None,
    digest: Any = None,
    buffers: CutBuffers | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """`cut_recording` in the form the event cache stores: (windows, lengths int64 [rows],
    {"t", "x", "y", "p"} columns of all samples concatenated in row order). Cuts the undecoded
    words and decodes only the events that land in a sample, straight into the columns.

    `alloc(n)` provides the output columns (e.g. in memory shared with another process), of
    EVENT_DTYPE's field types or narrower unsigned ones (uint8 x and y need `sensor`).
    `sensor` (H, W): raise AedatError if a sample event lies off it. `digest`: a hashlib
    object fed every byte of the .aedat (see `iter_words`). `buffers`: memory to reuse."""
    windows = read_labels(recording.labels)
    buffers = CutBuffers() if buffers is None else buffers
    buffers.used = 0
    pieces: list[list[tuple[int, int]]] = [[] for _ in range(len(windows))]  # (start, n) staged
    words = iter_words(
        recording.aedat, chunk_events=chunk_events, digest=digest, buffers=buffers.read
    )
    for t, data in words:
        for i, sel in _selectors(t, windows):
            part = t[sel]
            if len(part):
                pieces[i].append((buffers.append(part, data[sel]), len(part)))
    lengths = np.array([sum(n for _, n in p) for p in pieces], dtype=np.int64)
    staged = buffers.data[: buffers.used]
    if sensor is not None:
        _check_sensor(recording, staged, sensor)
    columns = alloc(int(lengths.sum()))
    narrow = min(int(np.iinfo(columns[k].dtype).max) for k in "xy")
    if narrow < 0x7FFF and (sensor is None or max(sensor) - 1 > narrow):  # x, y have 15 bits
        raise InputError(
            f"x, y columns holding up to {narrow} need a `sensor` that fits them, got {sensor}"
        )
    a = 0
    for piece in pieces:
        for start, n in piece:
            b, src = a + n, slice(start, start + n)
            columns["t"][a:b] = buffers.t[src]
            unpack_into(buffers.data[src], columns["x"][a:b], columns["y"][a:b], columns["p"][a:b])
            a = b
    return windows, lengths, columns


def _check_sensor(recording: Recording, data: np.ndarray, sensor: tuple[int, int]) -> None:
    height, width = sensor
    bx, by = xy_bound(data)  # cheap upper bounds, exact tests for power-of-two sizes
    if bx < width and by < height:
        return
    mx, my = max_xy(data)
    if mx >= width or my >= height:
        first = first_off_sensor(recording.aedat, sensor)
        where = "" if first is None else f" (the first: event {first[0]} at byte {first[1]})"
        raise AedatError(
            f"{recording.aedat}: events with x up to {mx} and y up to {my} do not fit the "
            f"{width}x{height} sensor{where}; not a DVS128 recording"
        )
