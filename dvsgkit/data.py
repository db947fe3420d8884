"""Torch access to the stores: datasets of frames (the frame store) and of events (events.h5), and
a loader that keeps a whole split on the device when it fits."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from dvsgkit.errors import DamagedError, InputError
from dvsgkit.framestore.budget import available_memory
from dvsgkit.framestore.check import one_line, sample_problem
from dvsgkit.framestore.read import open_frame_store

# What a split may take of the device's free memory (or of the host's available memory) before
# the loader streams it instead: room stays for the model's activations.
MEMORY_FRACTION = 0.4
# Tonic's event dtype for this dataset (tonic.datasets.DVSGesture.dtype): its transforms
# (ToFrame, Denoise, ...) take structured arrays with these fields.
TONIC_EVENT_DTYPE = np.dtype([("x", "<i2"), ("y", "<i2"), ("p", "?"), ("t", "<i8")])


class FrameDataset(Dataset):
    """Samples of one split of a frame store: (float32 tensor [T, 2, H, W], int label), the store
    checked on open and each sample against its checksum when read. raw=True keeps the stored
    integers (the loader converts on the device: 4x fewer bytes moved). The Zarr array is opened
    in each process that reads, so the dataset can go to DataLoader workers."""

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
        self.shape = tuple(group["frames"].shape)  # (N, T, 2, H, W)
        self.dtype = np.dtype(group["frames"].dtype)
        self.max_count = int(group.attrs.get("max_count", np.iinfo(self.dtype).max))
        self._frames: Any = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def frames(self) -> Any:
        """The split's Zarr frames array, opened once per process."""
        if self._pid != os.getpid():
            self._frames = open_frame_store(self.store, self.split)["frames"]
            self._pid = os.getpid()
        return self._frames

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range: {self.store} {self.split} has {n}")
        frames = torch.from_numpy(_torch_compatible(self.read(i % n), self.max_count))
        frames = frames if self.raw else frames.float()
        label = int(self.labels[i])
        if self.transform is not None:
            frames = self.transform(frames)
        return frames, label if self.target_transform is None else self.target_transform(label)

    def read(self, i: int, values: np.ndarray | None = None) -> np.ndarray:
        """Sample i's counts [T, 2, H, W] as stored, checked against its checksum: DamagedError
        naming the store, the sample, its chunk and the fix. `values`: sample i already read."""
        if values is None:
            try:
                values = self.frames[i]
            except Exception:  # a corrupt chunk: numcodecs/blosc raise several types
                values = None
        problem = sample_problem(self.frames, self.split, i, int(self.checksums[i]), values)
        if problem is not None:
            raise DamagedError(one_line(self.store, [problem]))
        return values

    def read_all(self) -> np.ndarray:
        """The whole split [N, T, 2, H, W], every sample checked as in `read`."""
        try:
            split = self.frames[:]
        except Exception:  # name the sample: read them one by one
            return np.stack([self.read(i) for i in range(len(self))])
        for i in range(len(self)):
            self.read(i, split[i])
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


def _torch_compatible(frames: np.ndarray, max_count: int) -> np.ndarray:
    """uint8 stays; wider unsigned counts become the signed dtype that holds them (torch has
    little support for uint16/uint32 tensors)."""
    if frames.dtype == np.uint8:
        return frames
    for dtype in (np.int16, np.int32, np.int64):
        if max_count <= np.iinfo(dtype).max:
            return frames.astype(dtype)
    raise InputError(f"counts up to {max_count} do not fit int64")


class _Batches(Dataset):
    """Item [i, j, ...] = those samples as one integer batch, read in a worker process sample by
    sample (zarr's per-chunk reads beat its fancy indexing ~8x)."""

    def __init__(self, dataset: FrameDataset) -> None:
        self.dataset = dataset

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        frames = np.stack([self.dataset.read(i) for i in idx])  # [B, T, 2, H, W]
        frames = _torch_compatible(frames, self.dataset.max_count)
        return torch.from_numpy(frames), torch.from_numpy(self.dataset.labels[idx])


class FrameLoader:
    """Batches (float32 [B, T, 2, H, W], int64 [B]) on `device`, in the order of torch's
    DistributedSampler (equal shares per rank, shuffled as a pure function of seed and epoch: a
    resumed run sees the same batches) cut by a BatchSampler. Mode "memory" holds the split on
    the device as integers; mode "stream" reads through a DataLoader whose `workers` persistent
    processes each read whole batches."""

    def __init__(
        self,
        dataset: FrameDataset,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        device: torch.device,
        seed: int,
        workers: int,
        rank: int,
        world_size: int,
        memory_budget: int | None,
    ) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise InputError(f"need 0 <= rank < world_size, got rank {rank}, world {world_size}")
        if workers < 0:
            raise InputError(f"workers must be >= 0, got {workers}")
        self.dataset, self.device, self.workers, self.seed = dataset, device, workers, seed
        self.sampler = DistributedSampler(
            dataset, world_size, rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.batches = BatchSampler(self.sampler, batch_size, drop_last)
        self.num_samples = self.sampler.num_samples  # samples this rank sees per epoch
        self.epoch = 0  # the epoch the next pass serves
        budget = _default_budget(device) if memory_budget is None else memory_budget
        itemsize = _torch_compatible(np.zeros(1, dataset.dtype), dataset.max_count).itemsize
        self.mode = "memory" if math.prod(dataset.shape) * itemsize <= budget else "stream"
        self._labels = torch.from_numpy(dataset.labels).to(device)
        self._host: np.ndarray | None = None  # memory mode on the CPU
        self._frames: torch.Tensor | None = None  # memory mode on an accelerator
        self._stream: DataLoader | None = None
        if self.mode == "memory":
            split = _torch_compatible(dataset.read_all(), dataset.max_count)  # [N, T, 2, H, W]
            if device.type == "cpu":
                self._host = split
            else:
                self._frames = torch.from_numpy(split).to(device)  # uploaded once

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        """Fix the next pass's order to that of `epoch` (a resumed run sees the same order)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1  # without set_epoch, each pass still gets a new order
        return self._iter_memory() if self.mode == "memory" else self._iter_stream()

    def _iter_memory(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = np.fromiter(itertools.chain.from_iterable(self.batches), np.int64)
        idx = torch.from_numpy(order).to(self.device)
        for start in range(0, len(order), self.batches.batch_size):
            batch = idx[start : start + self.batches.batch_size]
            if self._host is not None:
                # numpy gathers and converts ~5x faster than torch on our CPUs (measured): it
                # asks for huge pages for big arrays; fresh torch CPU tensors fault in 4 KiB pages.
                rows = order[start : start + self.batches.batch_size]
                frames = torch.from_numpy(self._host[rows].astype(np.float32))
            else:
                frames = self._frames.index_select(0, batch).float()
            yield frames, self._labels[batch]  # [B, T, 2, H, W] float32, [B] int64

    def _iter_stream(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        pin = self.device.type == "cuda"
        if self._stream is None:  # built once: its worker processes persist across epochs
            self._stream = DataLoader(
                _Batches(self.dataset),
                sampler=self.batches,  # iterated here, in this process, at each pass
                batch_size=None,  # each item already is a batch, read by one worker
                num_workers=self.workers,
                persistent_workers=self.workers > 0,
                pin_memory=pin,
                prefetch_factor=4 if self.workers else None,
                # Its own generator for the workers' base seed: drawing it from torch's global
                # RNG would shift the training RNG (dropout masks) and break exact resume.
                generator=torch.Generator().manual_seed(self.seed),
            )
        for frames, labels in _one_line_errors(self._stream):  # integers: 4x fewer bytes
            if self.device.type == "cpu":
                frames = torch.from_numpy(frames.numpy().astype(np.float32))  # see _iter_memory
            else:
                frames = frames.to(self.device, non_blocking=True).float()
            yield frames, labels.to(self.device, non_blocking=pin)  # [B, T, 2, H, W], [B]


def _one_line_errors(batches: Any) -> Iterator[Any]:
    """Keep the one line of a worker's DamagedError (DataLoader adds the worker's traceback)."""
    try:
        yield from batches
    except DamagedError as exc:
        text = str(exc)
        if "\n" not in text:
            raise
        last = text.strip().splitlines()[-1]
        raise DamagedError(last.partition("DamagedError: ")[2] or last) from None


def _default_budget(device: torch.device) -> int:
    """Bytes a whole split may occupy on `device` before the loader streams instead."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * MEMORY_FRACTION)
    return int((available_memory() or 0) * MEMORY_FRACTION)  # unknown: stream, which always works


def make_loader(
    store: Path,
    split: str,
    batch_size: int,
    *,
    shuffle: bool,
    drop_last: bool,
    device: str | torch.device = "cpu",
    seed: int = 0,
    workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    memory_budget: int | None = None,
) -> FrameLoader:
    """A loader over `split` of a frame store yielding (float32 [B, T, 2, H, W], int64 [B]) on
    `device`: the whole split held on the device when it fits `memory_budget` bytes (default: 40 %
    of free device / available host memory), else streamed from the store."""
    return FrameLoader(
        FrameDataset(store, split, raw=True),
        batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        device=torch.device(device),
        seed=seed,
        workers=workers,
        rank=rank,
        world_size=world_size,
        memory_budget=memory_budget,
    )
