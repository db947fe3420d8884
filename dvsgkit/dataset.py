"""DVSGesture, the front door: one split of the dataset at ROOT as a torch Dataset, its stores
built on first use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from dvsgkit.constants import BUILD_WORKERS, CLASS_NAMES
from dvsgkit.data import EventDataset, FrameDataset
from dvsgkit.frames import FrameSpec
from dvsgkit.framestore.build import build_frame_store, refresh_event_cache


class DVSGesture(Dataset):
    """The `split` ("train" or "test") of the DVS128 Gesture dataset at `root`: item i is
    (float32 tensor [T, 2, H, W] of event counts, int label 0..10), by default the frames of
    SpikingJelly's `DVS128Gesture(root, train=..., data_type='frame', frames_number=T,
    split_by=...)`. The frame options of `dvsgkit frames` are keywords, durations as the CLI
    writes them ("50ms") or integers of µs: `duration` (SpikingJelly's fixed duration: T_i
    frames, as many as sample i needs), `bin` (Tonic's fixed time bins; with `T`, cut or padded
    to T), `size` (64 or 32: downsampled, H = W = size) and `denoise` (Tonic's Denoise filter
    time); see `FrameSpec`. Batch samples of different lengths with
    `collate_fn=dvsgkit.data.pad_sequence_collate`. With `events=True`, item i is (Tonic-dtype
    events, label) instead (see `dvsgkit.data.EventDataset`), for Tonic's transforms.

    On first use it builds what is missing from the recordings in ROOT/extract/DvsGesture
    ('dvsgkit download' or 'dvsgkit synth' puts them there): ROOT/events.h5, then the frame store
    ROOT/{spec.name}.zarr (e.g. frames_number_16_split_by_number.zarr), with progress bars
    (`progress`) and `workers` processes; later it opens them (milliseconds), after checking
    them. `transform` gets each sample's frames (or events), `target_transform` its label."""

    classes = CLASS_NAMES  # label i is classes[i]

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        T: int | None = None,
        split_by: str = "number",
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        *,
        duration: int | str | None = None,
        bin: int | str | None = None,
        size: int = FrameSpec().size,
        denoise: int | str | None = None,
        events: bool = False,
        workers: int = BUILD_WORKERS,
        progress: bool = True,
    ) -> None:
        self.root, self.split = Path(root), split
        self.spec = FrameSpec(T, split_by, duration, bin, size, denoise)
        self.samples: EventDataset | FrameDataset
        if events:
            refresh_event_cache(root, workers=workers, progress=progress)
            self.samples = EventDataset(root, split, transform, target_transform=target_transform)
        else:
            store = build_frame_store(root, self.spec, workers=workers, progress=progress)
            self.samples = FrameDataset(
                store, split, transform=transform, target_transform=target_transform
            )

    @property
    def labels(self) -> Any:
        """int64 [N]: each sample's label, without reading its events."""
        return self.samples.labels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        return self.samples[i]

    def __repr__(self) -> str:
        what = "events" if isinstance(self.samples, EventDataset) else repr(self.spec)
        return f"DVSGesture({str(self.root)!r}, split={self.split!r}, {what}, {len(self)} samples)"
