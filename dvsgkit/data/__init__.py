"""Torch access to the stores: datasets of frames (a frame store's split) and of events
(events.h5) in datasets.py; a loader that keeps a whole split on the device when it fits, and
the padding of a ragged store's batches, in loader.py."""

from dvsgkit.data.datasets import TONIC_EVENT_DTYPE, EventDataset, FrameDataset, torch_compatible
from dvsgkit.data.loader import (
    MEMORY_FRACTION,
    FrameLoader,
    make_loader,
    pad_sequence_collate,
    padded_sequence_mask,
)

__all__ = [
    "MEMORY_FRACTION", "TONIC_EVENT_DTYPE", "EventDataset", "FrameDataset", "FrameLoader",
    "make_loader", "pad_sequence_collate", "padded_sequence_mask", "torch_compatible",
]  # fmt: skip
