"""A loader over a frame store's split that keeps the whole split on the device when it fits;
batches of a ragged store are padded to their longest sample, with each sample's length, as
SpikingJelly's `pad_sequence_collate` makes them (and `padded_sequence_mask` the mask)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from dvsgkit.data.datasets import FrameDataset, torch_compatible
from dvsgkit.errors import DamagedError, InputError
from dvsgkit.frames import pad_samples
from dvsgkit.framestore.budget import available_memory

# What a split may take of the device's free memory (or of the host's available memory) before
# the loader streams it instead: room stays for the model's activations.
MEMORY_FRACTION = 0.4


Batch = tuple[torch.Tensor, ...]  # frames, labels (and lengths, for a ragged store)


class _Batches(Dataset):
    """Item [i, j, ...] = those samples as one integer batch (ragged: padded, with lengths),
    read in a worker process sample by sample (zarr's per-chunk reads beat its fancy indexing
    ~8x)."""

    def __init__(self, dataset: FrameDataset) -> None:
        self.dataset = dataset

    def __getitem__(self, idx: list[int]) -> Batch:
        samples = [self.dataset.read(i) for i in idx]
        labels = torch.from_numpy(self.dataset.labels[idx])
        if not self.dataset.ragged:
            frames = torch_compatible(np.stack(samples), self.dataset.max_count)  # [B, T, 2, H, W]
            return torch.from_numpy(frames), labels
        offsets = np.cumsum([0] + [len(s) for s in samples])
        frames, lengths = pad_samples(np.concatenate(samples), offsets)  # [B, T_max, 2, H, W]
        frames = torch_compatible(frames, self.dataset.max_count)
        return torch.from_numpy(frames), labels, torch.from_numpy(lengths)


class FrameLoader:
    """Batches (float32 [B, T, 2, H, W], int64 [B]) on `device`, in the order of torch's
    DistributedSampler (equal shares per rank, shuffled as a pure function of seed and epoch: a
    resumed run sees the same batches) cut by a BatchSampler. A ragged store's batches are
    (frames [B, T_max, 2, H, W] zero-padded after each sample's own, labels, lengths int64
    [B]), as SpikingJelly's `pad_sequence_collate` returns them. Mode "memory" holds the split
    on the device as integers; mode "stream" reads through a DataLoader whose `workers`
    persistent processes each read whole batches."""

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
        itemsize = torch_compatible(np.zeros(1, dataset.dtype), dataset.max_count).itemsize
        self.mode = "memory" if math.prod(dataset.shape) * itemsize <= budget else "stream"
        self._labels = torch.from_numpy(dataset.labels).to(device)
        self._host: np.ndarray | None = None  # memory mode on the CPU
        self._frames: torch.Tensor | None = None  # memory mode on an accelerator
        self._stream: DataLoader | None = None
        if self.mode == "memory":
            split = torch_compatible(dataset.read_all(), dataset.max_count)  # [N, T, 2, H, W]
            if dataset.ragged:  # [F + 1, 2, H, W]: frame F is the padding, all zeros
                split = np.concatenate([split, np.zeros((1, *split.shape[1:]), split.dtype)])
            if device.type == "cpu":
                self._host = split
            else:
                self._frames = torch.from_numpy(split).to(device)  # uploaded once

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        """Fix the next pass's order to that of `epoch` (a resumed run sees the same order)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1  # without set_epoch, each pass still gets a new order
        return self._iter_memory() if self.mode == "memory" else self._iter_stream()

    def _frame_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ragged: the frame of each (sample, step) of the batch `rows`, [B, T_max] (steps
        after a sample's last frame: the zero frame), and the lengths [B]."""
        lengths = self.dataset.lengths[rows]
        steps = np.arange(int(lengths.max()))
        index = self.dataset.offsets[rows][:, None] + steps
        return np.where(steps < lengths[:, None], index, self.dataset.offsets[-1]), lengths

    def _iter_memory(self) -> Iterator[Batch]:
        order = np.fromiter(itertools.chain.from_iterable(self.batches), np.int64)
        idx = torch.from_numpy(order).to(self.device)
        for start in range(0, len(order), self.batches.batch_size):
            batch = idx[start : start + self.batches.batch_size]
            rows = order[start : start + self.batches.batch_size]
            lengths = None
            if self.dataset.ragged:
                rows, lengths = self._frame_rows(rows)
            if self._host is not None:
                # numpy gathers and converts ~5x faster than torch on our CPUs (measured): it
                # asks for huge pages for big arrays; fresh torch CPU tensors fault in 4 KiB pages.
                frames = torch.from_numpy(self._host[rows].astype(np.float32))
            elif lengths is None:
                frames = self._frames.index_select(0, batch).float()
            else:
                flat = torch.from_numpy(rows.ravel()).to(self.device)
                frames = self._frames.index_select(0, flat).unflatten(0, rows.shape).float()
            if lengths is None:
                yield frames, self._labels[batch]  # [B, T, 2, H, W] float32, [B] int64
            else:
                yield frames, self._labels[batch], torch.from_numpy(lengths).to(self.device)

    def _iter_stream(self) -> Iterator[Batch]:
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
        for frames, *rest in _one_line_errors(self._stream):  # integers: 4x fewer bytes
            if self.device.type == "cpu":
                frames = torch.from_numpy(frames.numpy().astype(np.float32))  # see _iter_memory
            else:
                frames = frames.to(self.device, non_blocking=True).float()
            yield frames, *(t.to(self.device, non_blocking=pin) for t in rest)


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
    `device` (a ragged store: padded frames, labels and lengths, see FrameLoader): the whole
    split held on the device when it fits `memory_budget` bytes (default: 40 % of free device /
    available host memory), else streamed from the store."""
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


def padded_sequence_mask(lengths: torch.Tensor, T: int | None = None) -> torch.Tensor:
    """bool [T, N]: step t of sample n is one of its own frames (t < lengths[n]), not padding;
    T defaults to the longest. SpikingJelly's `padded_sequence_mask`."""
    T = int(lengths.max()) if T is None else T
    return torch.arange(T, device=lengths.device)[:, None] < lengths[None, :]


def pad_sequence_collate(batch: list[tuple[Any, Any]]) -> tuple[torch.Tensor, ...]:
    """A DataLoader's collate_fn for samples of different frame counts (a ragged store's
    FrameDataset or DVSGesture): (frames [B, T_max, ...] zero-padded, labels, lengths), as
    SpikingJelly's `pad_sequence_collate`."""
    frames = [torch.as_tensor(x) for x, _ in batch]
    return (
        torch.nn.utils.rnn.pad_sequence(frames, batch_first=True),
        torch.as_tensor([y for _, y in batch]),
        torch.as_tensor([len(x) for x in frames]),
    )
