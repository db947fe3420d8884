"""Events -> [T, 2, H, W] count frames, SpikingJelly's fixed-frames-number rule (SPEC §4)."""

from __future__ import annotations

import numpy as np

from dvsgkit.constants import SENSOR_SIZE

SPLIT_BY = ("number", "time")


def check_frame_params(T: int, split_by: str) -> None:
    """Raise ValueError naming the bad value when T or split_by cannot be used."""
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T (frames per sample) must be an integer >= 1, got {T!r}")
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {', '.join(SPLIT_BY)}; got {split_by!r}")


def frame_of_event(events: np.ndarray, offsets: np.ndarray, T: int, split_by: str) -> np.ndarray:
    """Frame index 0..T-1 of every event, for samples concatenated in `events`.

    Sample s is `events[offsets[s]:offsets[s + 1]]` (events in time order). "number": frame i holds
    events [i*d, (i+1)*d) with d = n // T, the last frame also the remainder, and everything when
    n < T. "time": frame i holds t0 + i*dt <= t < t0 + (i+1)*dt with dt = (t[n-1] - t0) // T, the
    last frame also everything later; so empty windows stay empty, and dt == 0 puts every event in
    the last frame. For time-ordered events both rules equal SpikingJelly's index ranges.
    """
    check_frame_params(T, split_by)
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


def check_events(events: np.ndarray, sensor_size: tuple[int, int] = SENSOR_SIZE) -> None:
    """Raise ValueError when an event lies outside the sensor or has a polarity other than 0/1."""
    if events.size == 0:
        return
    H, W = sensor_size
    x_max, y_max, p_max = int(events["x"].max()), int(events["y"].max()), int(events["p"].max())
    if x_max >= W or y_max >= H or p_max > 1:
        raise ValueError(
            f"events outside the {H}x{W} sensor or with polarity > 1 "
            f"(max x {x_max}, max y {y_max}, max p {p_max}); the event cache is corrupt"
        )


def integrate_many(
    events: np.ndarray,
    offsets: np.ndarray,
    T: int,
    split_by: str = "number",
    sensor_size: tuple[int, int] = SENSOR_SIZE,
) -> np.ndarray:
    """Frames of S concatenated samples: int64 counts [S, T, 2, H, W], one bincount for all.

    `events` needs fields x, y, p (and t for split_by="time"); `offsets` is int [S + 1] into it.
    Pixel index is [p, y, x]: channel 0 counts polarity 0, channel 1 polarity 1.
    """
    check_frame_params(T, split_by)
    check_events(events, sensor_size)
    H, W = sensor_size
    offsets = np.asarray(offsets, dtype=np.int64)
    S = offsets.size - 1
    if events.size != offsets[-1] - offsets[0]:
        raise ValueError(
            f"offsets span {offsets[-1] - offsets[0]} events but {events.size} were given"
        )
    frame = frame_of_event(events, offsets, T, split_by)
    sample = np.repeat(np.arange(S, dtype=np.int64), np.diff(offsets))
    # Flat index into [S, T, 2, H, W]; int64 because S*T*2*H*W passes 2**31 for big blocks.
    idx = (sample * T + frame) * 2 + events["p"]
    idx = (idx * H + events["y"]) * W + events["x"]
    counts = np.bincount(idx, minlength=S * T * 2 * H * W)
    return counts.reshape(S, T, 2, H, W)  # [S, T, 2, H, W]


def integrate(
    events: np.ndarray,
    T: int,
    split_by: str = "number",
    sensor_size: tuple[int, int] = SENSOR_SIZE,
) -> np.ndarray:
    """One sample's events (EVENT_DTYPE, time order) -> int64 counts [T, 2, H, W].

    Equal to SpikingJelly's `integrate_events_by_fixed_frames_number` wherever that runs; where it
    crashes (an empty time window) the window gives an empty frame.
    """
    if events.dtype.names is None or not set("xyp") <= set(events.dtype.names):
        raise ValueError(f"events need fields x, y, p (and t); got dtype {events.dtype}")
    offsets = np.array([0, events.size], dtype=np.int64)
    return integrate_many(events, offsets, T, split_by, sensor_size)[0]
