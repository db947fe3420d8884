"""T frames per sample cut by event number or by time, SpikingJelly's frames_number rule
(docs/reference.md §4), for many samples in one bincount."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from dvsgkit.constants import SENSOR_SIZE
from dvsgkit.errors import InputError

# An EVENT_DTYPE array, or a mapping of its fields to 1-D arrays.
Events = np.ndarray | Mapping[str, np.ndarray]


def frame_of_event(events: np.ndarray, offsets: np.ndarray, T: int, split_by: str) -> np.ndarray:
    """Frame index 0..T-1 of every event, for samples concatenated in `events`.

    Sample s is `events[offsets[s]:offsets[s + 1]]` (events in time order). "number": frame i holds
    events [i*d, (i+1)*d) with d = n // T, the last frame also the remainder, and everything when
    n < T. "time": frame i holds t0 + i*dt <= t < t0 + (i+1)*dt with dt = (t[n-1] - t0) // T, the
    last frame also everything later; so empty windows stay empty, and dt == 0 puts every event in
    the last frame. For time-ordered events both rules equal SpikingJelly's index ranges.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)  # [S] events per sample
    sample = np.repeat(np.arange(lengths.size), lengths)  # [E] sample of each event
    if split_by == "number":
        starts = (offsets[:-1] - offsets[0])[sample]
        pos = np.arange(starts.size, dtype=np.int64) - starts  # [E] position inside its sample
        d = (lengths // T)[sample]
        # d == 0 (n < T): the reference's ranges are all empty but the last, [0, n).
        return np.where(d > 0, np.minimum(pos // np.maximum(d, 1), T - 1), T - 1)
    t = events["t"].astype(np.int64, copy=False)
    nonempty = lengths > 0
    first = np.zeros(lengths.size, dtype=np.int64)
    last = np.zeros(lengths.size, dtype=np.int64)
    base = offsets[:-1] - offsets[0]
    first[nonempty] = t[base[nonempty]]
    last[nonempty] = t[base[nonempty] + lengths[nonempty] - 1]
    dt = ((last - first) // T)[sample]
    rel = t - first[sample]  # [E] µs since the sample's first event
    # Clipping at 0 only matters for out-of-order timestamps (earlier than the first event).
    return np.where(dt > 0, np.clip(rel // np.maximum(dt, 1), 0, T - 1), T - 1)


def check_events(events: Events, sensor_size: tuple[int, int] = SENSOR_SIZE) -> None:
    """Raise InputError when an event lies outside the sensor or has a polarity other than 0/1."""
    if events["x"].size == 0:
        return
    H, W = sensor_size
    x_max, y_max, p_max = int(events["x"].max()), int(events["y"].max()), int(events["p"].max())
    if x_max >= W or y_max >= H or p_max > 1:
        raise InputError(
            f"events outside the {H}x{W} sensor or with polarity > 1 "
            f"(max x {x_max}, max y {y_max}, max p {p_max}); the event cache is corrupt"
        )


def frame_lengths(events: Events, offsets: np.ndarray, T: int, split_by: str) -> np.ndarray | None:
    """Events per frame, int64 [S, T], when every frame is a contiguous run of its sample's events
    (always for "number"; for "time" when timestamps are in order); None otherwise."""
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)  # [S]
    if split_by == "number":
        d = lengths // T
        out = np.repeat(d[:, None], T, axis=1)  # [S, T]
        out[:, -1] = lengths - (T - 1) * d  # the last frame takes the remainder (all when n < T)
        return out
    t = events["t"]
    base = offsets[:-1] - offsets[0]
    steps = np.diff(t)
    between = base[1:][(base[1:] > 0) & (base[1:] < t.size)]
    steps[between - 1] = 0  # a drop from one sample to the next is not disorder
    if (steps < 0).any():
        return None
    out = np.zeros((lengths.size, T), dtype=np.int64)
    for s in np.flatnonzero(lengths):
        ts = t[base[s] : base[s] + lengths[s]]
        dt = (int(ts[-1]) - int(ts[0])) // T
        # bounds[i] = first event at or after window i's start; frame i = [bounds[i], bounds[i+1]).
        starts = int(ts[0]) + dt * np.arange(T + 1, dtype=np.int64)
        bounds = np.searchsorted(ts, starts, side="left")
        bounds[0], bounds[-1] = 0, lengths[s]
        out[s] = np.diff(bounds)
    return out


def count_frames(
    events: Events, offsets: np.ndarray, T: int, split_by: str, frame_size: tuple[int, int]
) -> np.ndarray:
    """Frames of S concatenated samples: int64 counts [S, T, 2, H, W], one bincount for all.

    `events` has fields x, y, p (and t for split_by="time") on a `frame_size` grid; `offsets` is
    int [S + 1] into it. Pixel index is [p, y, x]: channel 0 counts polarity 0, channel 1
    polarity 1."""
    H, W = frame_size
    offsets = np.asarray(offsets, dtype=np.int64)
    S = offsets.size - 1
    itype = index_type(S * T, frame_size)
    lengths = frame_lengths(events, offsets, T, split_by)
    if lengths is not None:  # frames are runs of events: label them with one repeat
        idx = np.repeat(np.arange(S * T, dtype=itype), lengths.ravel())  # [E] sample*T + frame
    else:
        sample = np.repeat(np.arange(S, dtype=itype), np.diff(offsets))
        idx = sample * itype(T) + frame_of_event(events, offsets, T, split_by).astype(itype)
    return pixel_counts(idx, events, S * T, frame_size, itype).reshape(S, T, 2, H, W)


def index_type(frames: int, frame_size: tuple[int, int]) -> type:
    """The integer type of the flat pixel index of `frames` frames: int32 index arithmetic is
    ~2x faster than int64 and exact while they hold < 2**31 counts."""
    H, W = frame_size
    return np.int32 if frames * 2 * H * W < 2**31 else np.int64


def pixel_counts(
    frame: np.ndarray, events: Events, frames: int, frame_size: tuple[int, int], itype: type
) -> np.ndarray:
    """int64 counts [frames, 2, H, W] of the events, event k in frame `frame[k]` (overwritten:
    the flat index is built in place)."""
    H, W = frame_size
    idx = frame
    idx *= itype(2)
    idx += events["p"].astype(itype)
    idx *= itype(H)
    idx += events["y"].astype(itype)
    idx *= itype(W)
    idx += events["x"].astype(itype)
    counts = np.bincount(idx.astype(np.intp, copy=False), minlength=frames * 2 * H * W)
    return counts.reshape(frames, 2, H, W)
