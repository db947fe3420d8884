"""dvsgkit: the IBM DVS128 Gesture pipeline, from verified download to spiking CNN training.

    from dvsgkit import DVSGesture
    train = DVSGesture("data", split="train", T=16)  # builds the stores on first use
    frames, label = train[0]  # float32 tensor [16, 2, 128, 128], int 0..10

Importing the package is cheap: it never imports torch, cupy, zarr or h5py. The names below are
imported when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {  # name -> (module, attribute)
    "DVSGesture": ("dvsgkit.dataset", "DVSGesture"),
    "FrameSpec": ("dvsgkit.frames", "FrameSpec"),
    "DvsgkitError": ("dvsgkit.errors", "DvsgkitError"),
    "build_events": ("dvsgkit.eventcache.build", "build_event_cache"),
    "build_frames": ("dvsgkit.framestore.build", "build_frame_store"),
    "open_frames": ("dvsgkit.framestore.read", "open_frame_store"),
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dvsgkit' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # once: later look-ups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
