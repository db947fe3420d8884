"""Frames as index ranges of a sample's events: SpikingJelly's fixed duration and Tonic's fixed
time bins, rule for rule (the index arithmetic of each library, ties and disorder included)."""

from __future__ import annotations

import numpy as np


def duration_ranges(t: np.ndarray, duration: int) -> tuple[np.ndarray, np.ndarray]:
    """SpikingJelly's `integrate_events_by_fixed_duration`: a frame starts at the first event not
    yet taken and takes the events after it, in recorded order, while `t - t_start <=
    duration`; the next frame starts at the first event beyond. (starts, ends) int64 [F] into
    `t`. An empty sample gives one empty frame (SpikingJelly raises IndexError there)."""
    n = t.size
    if n == 0:
        return np.zeros(1, np.int64), np.zeros(1, np.int64)
    starts = []
    left = 0
    ordered = bool((t[1:] >= t[:-1]).all())
    while left < n:
        starts.append(left)
        limit = t[left] + duration
        if ordered:
            left = int(np.searchsorted(t, limit, side="right"))
        else:  # the first later event beyond the limit, in recorded order
            beyond = t[left + 1 :] > limit
            left = left + 1 + int(beyond.argmax()) if beyond.any() else n
    s = np.array(starts, np.int64)
    return s, np.append(s[1:], n)


def bin_ranges(t: np.ndarray, width: int, T: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Tonic's `ToFrame(sensor_size, time_window=width)` (`SliceByTime`, no overlap, incomplete
    last bin dropped): bins [t[0] + k*width, t[0] + (k+1)*width) for k < max(floor((t[-1] -
    t[0] - width) / width) + 1, 1), found with the same two `searchsorted` calls. With `T`, the
    first T bins, empty ones added up to T. An empty sample gives one empty bin (as Tonic)."""
    if t.size == 0:
        count = T or 1
        return np.zeros(count, np.int64), np.zeros(count, np.int64)
    start, span = int(t[0]), int(t[-1]) - int(t[0])
    n = max((span - width) // width + 1, 1)
    begins = np.arange(n, dtype=np.int64) * width + start
    lo = np.searchsorted(t, begins).astype(np.int64)
    hi = np.searchsorted(t, begins + width).astype(np.int64)
    if T is not None:
        lo, hi = lo[:T], hi[:T]
        pad = np.zeros(T - lo.size, np.int64)
        lo, hi = np.concatenate([lo, pad]), np.concatenate([hi, pad])
    return lo, hi


def ranges_of(
    t: np.ndarray, offsets: np.ndarray, mode: str, width: int, T: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every frame of S concatenated samples as a range of events: (starts, ends) int64 [F]
    into the concatenation, and frame offsets int64 [S + 1] (sample s is frames
    [offsets[s], offsets[s + 1]))."""
    cut = duration_ranges if mode == "duration" else lambda ts, w: bin_ranges(ts, w, T)
    starts, ends, counts = [], [], []
    base = int(offsets[0])
    for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
        lo, hi = cut(t[a - base : b - base], width)
        starts.append(lo + (a - base))
        ends.append(hi + (a - base))
        counts.append(lo.size)
    frame_offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=frame_offsets[1:])
    if not starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), frame_offsets
    return np.concatenate(starts), np.concatenate(ends), frame_offsets


def gather_ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frame of each taken event, index of each taken event): range k's events
    starts[k]..ends[k]-1, in order (an event may be taken by no range, or by two)."""
    lengths = np.maximum(ends - starts, 0)
    frame = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
    first = np.zeros(lengths.size, np.int64)
    np.cumsum(lengths[:-1], out=first[1:])
    index = np.arange(frame.size, dtype=np.int64) + np.repeat(starts - first, lengths)
    return frame, index
