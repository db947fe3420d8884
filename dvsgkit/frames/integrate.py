"""Samples' events -> count frames by a FrameSpec: denoise, downsample, cut, integrate, in the
order a user of Tonic would chain them (Denoise -> Downsample -> ToFrame)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dvsgkit.constants import SENSOR_SIZE
from dvsgkit.errors import InputError
from dvsgkit.frames.count import Events, check_events, count_frames, index_type, pixel_counts
from dvsgkit.frames.cut import gather_ranges, ranges_of
from dvsgkit.frames.denoise import denoise_many
from dvsgkit.frames.spec import FrameSpec

# fn(events {"t", "x", "y", "p"} of one sample, H, W) -> frames [T_i, 2, H, W]: SpikingJelly's
# custom_integrate_function.
Integrator = Callable[[dict[str, np.ndarray], int, int], np.ndarray]


def frame_size(spec: FrameSpec, sensor_size: tuple[int, int] = SENSOR_SIZE) -> tuple[int, int]:
    """(H, W) of the spec's frames."""
    factor = sensor_size[0] // spec.size
    return sensor_size[0] // factor, sensor_size[1] // factor


def prepare(
    events: Events, offsets: np.ndarray, spec: FrameSpec, sensor_size: tuple[int, int]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The events as the cut sees them, and their offsets: checked against the sensor,
    denoised per sample (Tonic's Denoise) and downsampled (Tonic's Downsample: coordinates
    scaled by size / sensor and floored)."""
    check_events(events, sensor_size)
    offsets = np.asarray(offsets, dtype=np.int64)
    n = events["x"].size
    if n != offsets[-1] - offsets[0]:
        raise InputError(
            f"integrate_many: offsets span {offsets[-1] - offsets[0]} events (offsets[0] = "
            f"{offsets[0]}, offsets[-1] = {offsets[-1]}) but `events` holds {n}; pass the "
            "offsets of exactly these events (offsets[-1] - offsets[0] == len(events))"
        )
    names = ("x", "y", "p", "t") if spec.needs_t else ("x", "y", "p")
    columns = {name: events[name] for name in names}
    if spec.denoise_us:
        columns, offsets = denoise_many(columns, offsets, spec.denoise_us)
    factor = sensor_size[0] // spec.size
    if factor > 1:
        columns["x"], columns["y"] = columns["x"] // factor, columns["y"] // factor
    return columns, offsets


def integrate_samples(
    events: Events,
    offsets: np.ndarray,
    spec: FrameSpec,
    sensor_size: tuple[int, int] = SENSOR_SIZE,
    integrate: Integrator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frames of S concatenated samples, for any spec: (int64 counts [F, 2, H, W], frame
    offsets int64 [S + 1]: sample s is frames [o[s], o[s + 1])). `events` has fields x, y, p
    (and t where the spec reads time) as an EVENT_DTYPE array or a mapping of 1-D arrays;
    `offsets` is int [S + 1] into it. A custom spec runs `integrate` on each sample."""
    columns, offsets = prepare(events, offsets, spec, sensor_size)
    H, W = frame_size(spec, sensor_size)
    S = offsets.size - 1
    if spec.mode == "custom":
        return _custom(columns, offsets, spec, integrate, (H, W))
    if not spec.ragged and spec.mode != "bin":
        counts = count_frames(columns, offsets, spec.T, spec.split_by, (H, W))
        return counts.reshape(S * spec.T, 2, H, W), np.arange(S + 1, dtype=np.int64) * spec.T
    width = spec.duration_us if spec.mode == "duration" else spec.bin_us
    starts, ends, frame_offsets = ranges_of(columns["t"], offsets, spec.mode, width, spec.T)
    frame, index = gather_ranges(starts, ends)
    taken = {name: columns[name][index] for name in ("x", "y", "p")}
    frames = int(frame_offsets[-1])
    itype = index_type(frames, (H, W))
    return pixel_counts(frame.astype(itype), taken, frames, (H, W), itype), frame_offsets


def _custom(
    columns: dict[str, np.ndarray],
    offsets: np.ndarray,
    spec: FrameSpec,
    integrate: Integrator | None,
    size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    if integrate is None:
        raise InputError(
            f"the frames of {spec.name} come from the custom integrator {spec.integrator!r}: "
            "pass the function (integrate=...)"
        )
    base, out = int(offsets[0]), []
    for s, (a, b) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)):
        sample = {name: columns[name][a - base : b - base] for name in ("t", "x", "y", "p")}
        out.append(checked_frames(integrate(sample, *size), spec.integrator, s, size))
    counts = [len(f) for f in out]
    frame_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return np.concatenate(out) if out else np.zeros((0, 2, *size), np.int64), frame_offsets


def checked_frames(
    frames: object, name: str | None, sample: int, size: tuple[int, int]
) -> np.ndarray:
    """A custom integrator's result as int64 counts [T, 2, H, W] (T >= 1, whole numbers >= 0:
    what a store holds), or an InputError naming the function, the sample and the rule."""
    a = np.asarray(frames)
    rule = (f"a custom integrator returns frames [T, 2, {size[0]}, {size[1]}] (T >= 1) of "
            "counts: whole numbers >= 0")  # fmt: skip
    if a.ndim != 4 or a.shape[0] < 1 or a.shape[1:] != (2, *size):
        raise InputError(f"{name} returned shape {list(a.shape)} for sample {sample}; {rule}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InputError(f"{name} returned {a.dtype} values for sample {sample}; {rule}")
    if a.size and (a.min() < 0 or (a.dtype.kind == "f" and not np.all(a == np.floor(a)))):
        raise InputError(
            f"{name} returned negative or fractional values for sample {sample}; {rule}"
        )
    return a.astype(np.int64)


def integrate_many(
    events: Events,
    offsets: np.ndarray,
    spec: FrameSpec,
    sensor_size: tuple[int, int] = SENSOR_SIZE,
) -> np.ndarray:
    """Frames of S concatenated samples of a fixed-T spec: int64 counts [S, T, 2, H, W] (one
    bincount for all; `integrate_samples` takes any spec). Pixel index is [p, y, x]: channel 0
    counts polarity 0, channel 1 polarity 1."""
    if spec.ragged:
        raise InputError(f"{spec.describe()} gives samples different frame counts; use "
                         "integrate_samples, which returns frame offsets")  # fmt: skip
    counts, _ = integrate_samples(events, offsets, spec, sensor_size)
    return counts.reshape(len(offsets) - 1, spec.T, *counts.shape[1:])


def integrate(
    events: np.ndarray,
    spec: FrameSpec,
    sensor_size: tuple[int, int] = SENSOR_SIZE,
    integrate: Integrator | None = None,
) -> np.ndarray:
    """One sample's events (EVENT_DTYPE) -> int64 counts [T, 2, H, W] (T the spec's, or as
    many as the sample needs). For T frames by number or time: SpikingJelly's
    `integrate_events_by_fixed_frames_number` wherever that runs (where it crashes, on an
    empty time window, the window gives an empty frame)."""
    if events.dtype.names is None or not set("xyp") <= set(events.dtype.names):
        raise InputError(f"events need fields x, y, p (and t); got dtype {events.dtype}")
    offsets = np.array([0, events.size], dtype=np.int64)
    return integrate_samples(events, offsets, spec, sensor_size, integrate)[0]


def pad_samples(frames: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ragged frames [F, ...] with offsets [S + 1] -> (frames [S, T_max, ...] zero-padded after
    each sample's own, lengths int64 [S]): what SpikingJelly's `pad_sequence_collate` makes."""
    lengths = np.diff(offsets)
    steps = int(lengths.max()) if lengths.size else 0
    out = np.zeros((lengths.size, steps, *frames.shape[1:]), frames.dtype)
    mask = np.arange(steps) < lengths[:, None]  # [S, T_max]
    out[mask] = frames[offsets[0] : offsets[-1]]
    return out, lengths
