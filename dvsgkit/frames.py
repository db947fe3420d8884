"""Events -> [T, 2, H, W] count frames, by SpikingJelly's rule (docs/reference.md §4), and
FrameSpec, the one value that says which frames: what a frame store records and a checkpoint
keeps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from dvsgkit.constants import SENSOR_SIZE
from dvsgkit.errors import InputError

SPLIT_BY = ("number", "time")

# An EVENT_DTYPE array, or a mapping of its fields to 1-D arrays.
Events = np.ndarray | Mapping[str, np.ndarray]


@dataclass(frozen=True)
class FrameSpec:
    """Which frames a sample's events become: `T` frames, cut by event "number" or by "time".
    Checked once, here (InputError naming the bad value)."""

    T: int = 16
    split_by: str = "number"

    def __post_init__(self) -> None:
        T = self.T
        if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
            raise InputError(f"T (frames per sample) must be an integer >= 1, got {T!r}")
        if self.split_by not in SPLIT_BY:
            raise InputError(
                f"split_by must be one of {', '.join(SPLIT_BY)}; got {self.split_by!r}"
            )
        object.__setattr__(self, "T", int(T))

    @property
    def name(self) -> str:
        """The frame store's name without .zarr (SpikingJelly's folder name)."""
        return f"frames_number_{self.T}_split_by_{self.split_by}"

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as a store's attributes and a checkpoint hold them."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FrameSpec:
        """The spec recorded in `data` (a store's attributes, a checkpoint's config); keys that
        are not the spec's are ignored, missing ones take the defaults."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


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
    """Raise ValueError when an event lies outside the sensor or has a polarity other than 0/1."""
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


def integrate_many(
    events: Events,
    offsets: np.ndarray,
    spec: FrameSpec,
    sensor_size: tuple[int, int] = SENSOR_SIZE,
) -> np.ndarray:
    """Frames of S concatenated samples: int64 counts [S, T, 2, H, W], one bincount for all.

    `events` has fields x, y, p (and t for split_by="time"): an EVENT_DTYPE array or a mapping of
    1-D arrays (what the store reads, without building a structured copy); `offsets` is int
    [S + 1] into it. Pixel index is [p, y, x]: channel 0 counts polarity 0, channel 1 polarity 1.
    """
    T, split_by = spec.T, spec.split_by
    check_events(events, sensor_size)
    H, W = sensor_size
    offsets = np.asarray(offsets, dtype=np.int64)
    S = offsets.size - 1
    n = events["x"].size
    if n != offsets[-1] - offsets[0]:
        raise InputError(
            f"integrate_many: offsets span {offsets[-1] - offsets[0]} events (offsets[0] = "
            f"{offsets[0]}, offsets[-1] = {offsets[-1]}) but `events` holds {n}; pass the "
            "offsets of exactly these events (offsets[-1] - offsets[0] == len(events))"
        )
    # int32 index arithmetic is ~2x faster than int64 and exact while the block is < 2**31 counts.
    itype = np.int32 if S * T * 2 * H * W < 2**31 else np.int64
    lengths = frame_lengths(events, offsets, T, split_by)
    if lengths is not None:  # frames are runs of events: label them with one repeat
        idx = np.repeat(np.arange(S * T, dtype=itype), lengths.ravel())  # [E] sample*T + frame
    else:
        sample = np.repeat(np.arange(S, dtype=itype), np.diff(offsets))
        idx = sample * itype(T) + frame_of_event(events, offsets, T, split_by).astype(itype)
    # Flat index into [S, T, 2, H, W], built in place.
    idx *= itype(2)
    idx += events["p"].astype(itype)
    idx *= itype(H)
    idx += events["y"].astype(itype)
    idx *= itype(W)
    idx += events["x"].astype(itype)
    counts = np.bincount(idx.astype(np.intp, copy=False), minlength=S * T * 2 * H * W)
    return counts.reshape(S, T, 2, H, W)  # [S, T, 2, H, W]


def integrate(
    events: np.ndarray, spec: FrameSpec, sensor_size: tuple[int, int] = SENSOR_SIZE
) -> np.ndarray:
    """One sample's events (EVENT_DTYPE, time order) -> int64 counts [T, 2, H, W].

    Equal to SpikingJelly's `integrate_events_by_fixed_frames_number` wherever that runs; where it
    crashes (an empty time window) the window gives an empty frame.
    """
    if events.dtype.names is None or not set("xyp") <= set(events.dtype.names):
        raise InputError(f"events need fields x, y, p (and t); got dtype {events.dtype}")
    offsets = np.array([0, events.size], dtype=np.int64)
    return integrate_many(events, offsets, spec, sensor_size)[0]
