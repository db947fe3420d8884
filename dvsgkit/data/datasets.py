"""Torch datasets over the stores: a frame store's split (`FrameDataset`), events.h5's
(`EventDataset`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dvsgkit.errors import DamagedError, InputError
from dvsgkit.framestore.check import one_line
from dvsgkit.framestore.chunks import SplitFrames
from dvsgkit.framestore.read import open_frame_store

# Tonic's event dtype for this dataset (tonic.datasets.DVSGesture.dtype): its transforms
# (ToFrame, Denoise, ...) take structured arrays with these fields.
TONIC_EVENT_DTYPE = np.dtype([("x", "<i2"), ("y", "<i2"), ("p", "?"), ("t", "<i8")])


class FrameDataset(Dataset):
    """Samples of one split of a frame store: (float32 tensor [T, 2, H, W], int label), T the
    store's, or the sample's own frame count in a ragged store; the store checked on open and
    each sample against its checksum when read. raw=True keeps the stored integers (the loader
    converts on the device: 4x fewer bytes moved). The Zarr array is opened in each process
    that reads, so the dataset can go to DataLoader workers."""

    def __init__(
        self,
        store: Path,
        split: str,
        *,
        raw: bool = False,
        transform: Callable[[torch.Tensor], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
    ) -> None:
        self.store, self.split, self.raw = Path(store), split, raw
        self.transform, self.target_transform = transform, target_transform
        group = open_frame_store(self.store, split)  # errors name the path and the fix
        self.labels = np.asarray(group["labels"][:], dtype=np.int64)  # [N]
        self.checksums = group["checksums"][:]  # [N] crc32 of each sample as built
        self.shape = tuple(group["frames"].shape)  # (N, T, 2, H, W); ragged (F, 2, H, W)
        self.dtype = np.dtype(group["frames"].dtype)
        self.max_count = int(group.attrs.get("max_count", np.iinfo(self.dtype).max))
        frames = SplitFrames(group, self.store / split / "frames")
        self.offsets = frames.offsets  # ragged: int64 [N + 1], sample i is frames o[i]:o[i+1]
        self.lengths = frames.lengths()  # ragged: int64 [N] frames per sample; else None
        self._frames: SplitFrames | None = frames  # this process's; a worker opens its own
        self._pid: int | None = os.getpid()

    @property
    def ragged(self) -> bool:
        return self.offsets is not None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def frames(self) -> SplitFrames:
        """The split's frames, opened once per process."""
        if self._pid != os.getpid():
            group = open_frame_store(self.store, self.split)
            self._frames = SplitFrames(group, self.store / self.split / "frames")
            self._pid = os.getpid()
        return self._frames

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range: {self.store} {self.split} has {n}")
        frames = torch.from_numpy(torch_compatible(self.read(i % n), self.max_count))
        frames = frames if self.raw else frames.float()
        label = int(self.labels[i])
        if self.transform is not None:
            frames = self.transform(frames)
        return frames, label if self.target_transform is None else self.target_transform(label)

    def read(self, i: int, values: np.ndarray | None = None) -> np.ndarray:
        """Sample i's counts [T, 2, H, W] as stored, checked against its checksum: DamagedError
        naming the store, the sample, its chunks and the fix. `values`: sample i already read."""
        if values is None:
            try:
                values = self.frames.read(i)
            except Exception:  # a corrupt chunk: numcodecs/blosc raise several types
                values = None
        problem = self.frames.problem(i, int(self.checksums[i]), values)
        if problem is not None:
            raise DamagedError(one_line(self.store, [problem]))
        return values

    def read_all(self) -> np.ndarray:
        """The whole split [N, T, 2, H, W] (ragged: every frame [F, 2, H, W], sample i at
        `offsets[i]`), every sample checked as in `read`."""
        try:
            split = self.frames.read_all()
        except Exception:  # name the sample: read them one by one
            parts = [self.read(i) for i in range(len(self))]
            return np.concatenate(parts) if self.ragged else np.stack(parts)
        o = self.offsets
        for i in range(len(self)):
            self.read(i, split[i] if o is None else split[o[i] : o[i + 1]])
        return split

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_frames": None, "_pid": None}  # reopen in the worker


class EventDataset(Dataset):
    """Samples of one split of ROOT/events.h5: (events [E] of TONIC_EVENT_DTYPE, t in absolute µs,
    recorded order; int label 0..10), so Tonic's transforms apply as they are, e.g.
    `transform=tonic.transforms.ToFrame(sensor_size=(128, 128, 2), n_event_bins=16)`. The cache
    is checked as a frame build checks it (seals on creation, each read's checksums and pixels,
    the file the labels came from in every process, where it is opened on first read)."""

    def __init__(
        self,
        root: Path,
        split: str,
        transform: Callable[[np.ndarray], Any] | None = None,
        *,
        target_transform: Callable[[int], Any] | None = None,
    ) -> None:
        from dvsgkit.eventcache.layout import event_cache_path
        from dvsgkit.eventcache.read import EventCache

        self.path, self.split = event_cache_path(root), split
        self.transform, self.target_transform = transform, target_transform
        with EventCache(self.path) as cache:  # errors name the path and the fix
            cache.check_sealed()  # never a dataset changed after the build
            self.labels = cache.labels(split).astype(np.int64)  # [N]
            self.identity = cache.identity  # of the file the labels come from
        self._cache: Any = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        from dvsgkit.eventcache.read import EventCache, check_unchanged

        if self._pid != os.getpid():
            cache = EventCache(self.path)
            try:
                check_unchanged(self.path, self.identity, cache.identity, "this EventDataset "
                                "was in use", "create the EventDataset again")  # fmt: skip
            except InputError:
                cache.close()
                raise
            self._cache, self._pid = cache, os.getpid()
        sample = self._cache.sample(self.split, i)  # EVENT_DTYPE [E]; IndexError names the range
        events = np.empty(len(sample), TONIC_EVENT_DTYPE)
        for name in TONIC_EVENT_DTYPE.names:
            events[name] = sample[name]
        label = int(self.labels[i])
        if self.transform is not None:
            events = self.transform(events)
        return events, label if self.target_transform is None else self.target_transform(label)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None, "_pid": None}  # reopen in the worker


def torch_compatible(frames: np.ndarray, max_count: int) -> np.ndarray:
    """uint8 stays; wider unsigned counts become the signed dtype that holds them (torch has
    little support for uint16/uint32 tensors)."""
    if frames.dtype == np.uint8:
        return frames
    for dtype in (np.int16, np.int32, np.int64):
        if max_count <= np.iinfo(dtype).max:
            return frames.astype(dtype)
    raise InputError(f"counts up to {max_count} do not fit int64")
