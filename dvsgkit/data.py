"""Torch access to a frame store: a Dataset, and a loader that keeps a split on the device."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dvsgkit.store.frames import open_frame_store

# What a split may take of the device's free memory (or of the host's available memory) before
# the loader streams it instead: room stays for the model's activations.
MEMORY_FRACTION = 0.4


class FrameDataset(torch.utils.data.Dataset):
    """Samples of one split of a frame store: (float32 tensor [T, 2, H, W], int label).

    With raw=True the frames stay in the store's integer dtype (the loader converts on the
    device, moving 4x fewer bytes). The Zarr array is opened lazily in each process, so the
    dataset can go to DataLoader worker processes.
    """

    def __init__(self, store: Path, split: str, *, raw: bool = False) -> None:
        self.store, self.split, self.raw = Path(store), split, raw
        group = open_frame_store(self.store, split)  # validates: errors name the path
        self.labels = np.asarray(group["labels"][:], dtype=np.int64)  # [N]
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

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range: {self.store} {self.split} has {n}")
        frames = torch.from_numpy(_torch_compatible(self.frames[i % n], self.max_count))
        return (frames if self.raw else frames.float()), int(self.labels[i])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_frames": None, "_pid": None}  # reopen in the worker


def _torch_compatible(frames: np.ndarray, max_count: int) -> np.ndarray:
    """uint8 stays; wider unsigned counts become the signed dtype that holds them (torch has
    little support for uint16/uint32 tensors)."""
    if frames.dtype == np.uint8:
        return frames
    for dtype in (np.int16, np.int32, np.int64):
        if max_count <= np.iinfo(dtype).max:
            return frames.astype(dtype)
    raise ValueError(f"counts up to {max_count} do not fit int64")


class FrameLoader:
    """Batches (float32 [B, T, 2, H, W], int64 [B]) on `device`, shuffled as a pure function of
    (seed, epoch). Mode "memory" holds the whole split on the device as integers and gathers each
    batch there; mode "stream" reads batches through a DataLoader (with `workers` processes)."""

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
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world {world_size}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.drop_last, self.device = shuffle, drop_last, device
        self.seed, self.workers, self.rank, self.world_size = seed, workers, rank, world_size
        self.epoch = 0
        n = len(dataset)
        # Like DistributedSampler: equal shares, dropping the tail when drop_last, else padding
        # with the first indices of the order (a few samples seen twice per epoch).
        per_rank = n // world_size if drop_last else math.ceil(n / world_size)
        self.num_samples = per_rank  # samples this rank sees per epoch
        budget = _default_budget(device) if memory_budget is None else memory_budget
        nbytes = (
            math.prod(dataset.shape)
            * _torch_compatible(np.zeros(1, dataset.dtype), dataset.max_count).itemsize
        )
        self.mode = "memory" if nbytes <= budget else "stream"
        self._frames: torch.Tensor | None = None
        self._labels = torch.from_numpy(dataset.labels).to(device)
        if self.mode == "memory":
            self._frames = torch.from_numpy(
                _torch_compatible(dataset.frames[:], dataset.max_count)
            ).to(device)  # [N, T, 2, H, W] integers, uploaded once

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Fix the next pass's order to that of `epoch` (a resumed run sees the same order)."""
        self.epoch = epoch

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's sample indices for `epoch`, in the order they are served."""
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.arange(n)
        total = self.num_samples * self.world_size
        if total > n:  # pad to an equal share per rank
            order = np.concatenate([order, np.resize(order, total - n)])
        return order[:total][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices(self.epoch)
        self.epoch += 1  # without set_epoch, each pass still gets a new order
        if self.drop_last:
            order = order[: len(self) * self.batch_size]
        if self.mode == "memory":
            yield from self._iter_memory(order)
        else:
            yield from self._iter_stream(order)

    def _iter_memory(self, order: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        assert self._frames is not None
        idx = torch.from_numpy(order).to(self.device)
        for start in range(0, idx.numel(), self.batch_size):
            batch = idx[start : start + self.batch_size]
            frames = self._frames.index_select(0, batch).float()  # [B, T, 2, H, W]
            yield frames, self._labels[batch]

    def _iter_stream(self, order: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        pin = self.device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=order.tolist(),
            num_workers=self.workers,
            pin_memory=pin,
            prefetch_factor=4 if self.workers else None,
        )
        for frames, labels in loader:
            frames = frames.to(self.device, non_blocking=pin).float()  # [B, T, 2, H, W]
            yield frames, labels.to(self.device, non_blocking=pin)


def _default_budget(device: torch.device) -> int:
    """Bytes a whole split may occupy on `device` before the loader streams instead."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * MEMORY_FRACTION)
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: stream, which always works
        return 0
    return int(available * MEMORY_FRACTION)


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
    dataset = FrameDataset(store, split, raw=True)
    return FrameLoader(
        dataset,
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
