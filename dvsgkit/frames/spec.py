"""FrameSpec, the one value that says which frames a sample's events become: what a frame store
records, a checkpoint keeps and every command passes on. Checked once, here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from dvsgkit.constants import SENSOR_HEIGHT
from dvsgkit.errors import InputError
from dvsgkit.io.recordings import parse_duration

SPLIT_BY = ("number", "time")
SIZES = (SENSOR_HEIGHT, SENSOR_HEIGHT // 2, SENSOR_HEIGHT // 4)  # 128, 64, 32
# The CLI option of each field, for messages and `cli_options`.
OPTIONS = {"T": "-T", "split_by": "--split-by", "duration_us": "--duration", "bin_us": "--bin",
           "size": "--size", "denoise_us": "--denoise", "integrator": "integrate="}  # fmt: skip
DURATIONS = ("duration_us", "bin_us", "denoise_us")


def format_us(us: int) -> str:
    """A duration as the CLI writes it: 50ms, 2s, 250us."""
    for unit, scale in (("s", 1_000_000), ("ms", 1_000)):
        if us % scale == 0:
            return f"{us // scale}{unit}"
    return f"{us}us"


def _microseconds(name: str, value: Any) -> int | None:
    """An integer of µs, or a duration as the CLI writes it ("50ms"; a bare number is seconds,
    as for every duration option), as int µs > 0; None stays None."""
    if value is None:
        return None
    option = OPTIONS[name]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        us = int(value)
    elif isinstance(value, str):
        us = parse_duration(value, option, allow_zero=True)  # its message names the fix
    else:
        raise InputError(
            f"{option} takes a duration such as 50ms or an integer of µs, got {value!r}"
        )
    if us <= 0:
        raise InputError(f"{option} {value} must be longer than 0 µs; give e.g. {option} 10ms")
    return us


@dataclass(frozen=True)
class FrameSpec:
    """Which frames a sample's events become, in one of four ways (docs/data.md, "Frames"):

    * `T` frames cut by event "number" or by "time" (SpikingJelly's frames_number; T defaults
      to 16);
    * `duration_us`: one frame per fixed duration, as many as the sample needs (SpikingJelly's
      `duration`);
    * `bin_us`: fixed time bins from the sample's first event (Tonic's `ToFrame(time_window)`),
      with `T` every sample cut or padded to T bins;
    * `integrator`: the name of a function `fn(events, H, W) -> frames` given to the build.

    Before that, `denoise_us` drops isolated events (Tonic's `Denoise`) and `size` (64, 32)
    downsamples the pixels (Tonic's `Downsample`). Durations are ints of µs or strings as the
    CLI writes them ("50ms"). A spec without a fixed T (duration, bins without T, custom) gives
    samples of different frame counts: `ragged`."""

    T: int | None = None
    split_by: str = "number"
    duration_us: int | None = None
    bin_us: int | None = None
    size: int = SENSOR_HEIGHT
    denoise_us: int | None = None
    integrator: str | None = None

    def __post_init__(self) -> None:
        for name in DURATIONS:
            object.__setattr__(self, name, _microseconds(name, getattr(self, name)))
        T, cut = self.T, [n for n in ("duration_us", "bin_us", "integrator") if getattr(self, n)]
        if len(cut) > 1:
            given = " and ".join(OPTIONS[n] for n in cut)
            raise InputError(f"{given} are different ways to cut frames; give one of them")
        if T is not None and (isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1):
            raise InputError(f"T must be an integer >= 1, got {T!r} (frames per sample)")
        if self.split_by not in SPLIT_BY:
            raise InputError(
                f"split_by must be one of {', '.join(SPLIT_BY)}; got {self.split_by!r}"
            )
        if cut and self.split_by != "number":
            raise InputError(f"--split-by cuts -T frames by number or time; drop it with "
                             f"{OPTIONS[cut[0]]}")  # fmt: skip
        if T is not None and cut and cut[0] != "bin_us":
            raise InputError(
                f"{OPTIONS[cut[0]]} gives each sample as many frames as it needs: drop -T (or "
                "cut a fixed number of fixed bins with --bin and -T)"
            )
        if self.size not in SIZES or isinstance(self.size, bool):
            raise InputError(
                f"--size {self.size} is not a frame size: frames are {', '.join(map(str, SIZES))} "
                "pixels square (the 128 x 128 sensor downsampled by 1, 2 or 4, as GestureNet's "
                "five 2x2 poolings need); give --size 64 or --size 32"
            )
        if self.integrator is not None and not str(self.integrator).isidentifier():
            raise InputError(
                f"a custom integrator names its frame store: {self.integrator!r} is not a name; "
                "define it with def (a lambda has none)"
            )
        fixed = T is None and not cut
        object.__setattr__(self, "T", 16 if fixed else None if T is None else int(T))
        object.__setattr__(self, "size", int(self.size))

    def __repr__(self) -> str:
        hidden = {"T", "split_by"} if self.ragged else set()  # what a ragged spec does not use
        shown = {k: v for k, v in self.to_dict().items() if k not in hidden}
        return f"FrameSpec({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def mode(self) -> str:
        """ "number", "time", "duration", "bin" or "custom": how the frames are cut."""
        if self.duration_us:
            return "duration"
        if self.bin_us:
            return "bin"
        return "custom" if self.integrator else self.split_by

    @property
    def ragged(self) -> bool:
        """Whether samples may have different frame counts (no fixed T)."""
        return self.T is None

    @property
    def needs_t(self) -> bool:
        """Whether the cut reads the timestamps."""
        return self.mode != "number" or self.denoise_us is not None

    @property
    def name(self) -> str:
        """The frame store's name without .zarr, SpikingJelly's folder names extended:
        `<cut>[_size_<S>][_denoise_<µs>]`, the cut being frames_number_<T>_split_by_<rule>,
        duration_<µs>, bin_<µs>[_T_<T>] or the integrator's name."""
        cut = {
            "duration": f"duration_{self.duration_us}",
            "bin": f"bin_{self.bin_us}" + (f"_T_{self.T}" if self.T else ""),
            "custom": str(self.integrator),
        }.get(self.mode, f"frames_number_{self.T}_split_by_{self.split_by}")
        size = f"_size_{self.size}" if self.size != SENSOR_HEIGHT else ""
        return cut + size + (f"_denoise_{self.denoise_us}" if self.denoise_us else "")

    def describe(self) -> str:
        """One line for people: "T=16, split_by=number", "duration 50ms, size 32", ..."""
        cut = {
            "duration": f"duration {format_us(self.duration_us or 0)} (frames per sample vary)",
            "bin": f"bins of {format_us(self.bin_us or 0)}"
            + (f", T={self.T}" if self.T else " (frames per sample vary)"),
            "custom": f"custom integrator {self.integrator} (frames per sample vary)",
        }.get(self.mode, f"T={self.T}, split_by={self.split_by}")
        size = f", size {self.size}" if self.size != SENSOR_HEIGHT else ""
        return cut + size + (f", denoise {format_us(self.denoise_us)}" if self.denoise_us else "")

    def cli_options(self) -> str:
        """The `dvsgkit frames` options that give this spec (a custom integrator has none)."""
        out = []
        for name, value in self.to_dict().items():
            if value is None or (name == "split_by" and self.mode not in SPLIT_BY):
                continue
            shown = format_us(value) if name in DURATIONS else value
            out.append(f"{OPTIONS[name]} {shown}")
        return " ".join(out)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as a store's attributes and a checkpoint hold them: T and split_by,
        then the other fields that differ from their defaults (a plain spec's record stays
        what it has always been)."""
        default = FrameSpec(T=1)
        full = asdict(self)
        return {k: v for k, v in full.items()
                if k in ("T", "split_by") or v != getattr(default, k)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FrameSpec:
        """The spec recorded in `data` (a store's attributes, a checkpoint's config); keys that
        are not the spec's are ignored, missing ones take the defaults."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def override(self, **given: Any) -> FrameSpec:
        """This spec (a checkpoint's) with the options a command was given (None: not given).
        A cut given (-T or --split-by, --duration, --bin) replaces the recorded cut; --size
        and --denoise replace their own values."""
        given = {k: v for k, v in given.items() if v is not None}
        keep = {k: getattr(self, k) for k in ("size", "denoise_us")}
        if "duration_us" in given or "bin_us" in given:
            return FrameSpec(**keep | given)
        if "T" in given or "split_by" in given:
            cut = {"bin_us": self.bin_us} if self.bin_us and "split_by" not in given else {}
            if not cut:
                cut = {"T": self.T if self.mode in SPLIT_BY else None, "split_by": self.split_by}
            return FrameSpec(**keep | cut | given)
        return replace(self, **given)
