"""Events -> count frames: FrameSpec says which frames (spec.py); the cuts are SpikingJelly's
frames_number (count.py) and fixed duration, and Tonic's fixed time bins (cut.py), after Tonic's
Denoise (denoise.py) and Downsample; integrate.py runs them. Pure numpy."""

from dvsgkit.frames.count import Events, check_events, frame_lengths, frame_of_event
from dvsgkit.frames.integrate import (
    Integrator,
    frame_size,
    integrate,
    integrate_many,
    integrate_samples,
    pad_samples,
)
from dvsgkit.frames.spec import SIZES, SPLIT_BY, FrameSpec, format_us

__all__ = [
    "SIZES", "SPLIT_BY", "Events", "FrameSpec", "Integrator", "check_events", "format_us",
    "frame_lengths", "frame_of_event", "frame_size", "integrate", "integrate_many",
    "integrate_samples", "pad_samples",
]  # fmt: skip
