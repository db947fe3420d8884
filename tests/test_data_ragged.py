"""A ragged store through FrameDataset and make_loader: each sample's own frames; batches padded
and measured exactly as SpikingJelly's pad_sequence_collate and padded_sequence_mask make them,
in memory and streaming modes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dvsgkit.data import FrameDataset, make_loader, pad_sequence_collate, padded_sequence_mask
from dvsgkit.eventcache.layout import event_cache_path
from dvsgkit.eventcache.read import EventCache
from dvsgkit.frames import FrameSpec, integrate
from dvsgkit.framestore.build import build_frame_store

SPEC = FrameSpec(duration_us="400ms", size=64)


@pytest.fixture(scope="module")
def store(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ragged")
    (root / "events.h5").symlink_to(event_cache_path(tiny_root))
    return build_frame_store(root, SPEC, workers=1, progress=False)


def test_items_are_each_samples_own_frames(store: Path, tiny_root: Path) -> None:
    dataset = FrameDataset(store, "test")
    with EventCache(event_cache_path(tiny_root)) as cache:
        for i in range(len(dataset)):
            frames, label = dataset[i]
            want = integrate(cache.sample("test", i), SPEC)
            assert frames.dtype == torch.float32 and frames.shape == (len(want), 2, 64, 64)
            assert torch.equal(frames, torch.from_numpy(want).float())
            assert label == int(cache.labels("test")[i]) and dataset.lengths[i] == len(want)


@pytest.mark.parametrize(
    "mode", [{}, {"memory_budget": 0}, {"memory_budget": 0, "workers": 1}], ids=str
)
def test_batches_are_spikingjelly_padded_batches(store: Path, sj_datasets, mode: dict) -> None:
    dataset = FrameDataset(store, "train")
    loader = make_loader(store, "train", 5, shuffle=True, drop_last=False, seed=3, **mode)
    assert loader.mode == ("stream" if mode else "memory")
    batches = iter(loader)  # fixes the epoch's order
    rows = list(loader.batches)
    seen = 0
    for batch, (frames, labels, lengths) in zip(rows, batches, strict=True):
        ref_frames, ref_labels, ref_lengths = sj_datasets.pad_sequence_collate(
            [dataset[i] for i in batch]
        )
        assert torch.equal(frames, ref_frames) and torch.equal(labels, ref_labels)
        assert torch.equal(lengths, ref_lengths)
        assert torch.equal(
            padded_sequence_mask(lengths), sj_datasets.padded_sequence_mask(ref_lengths)
        )
        seen += len(batch)
    assert seen == len(dataset) and len(set(dataset.lengths.tolist())) > 1


def test_padding_helpers_equal_spikingjelly(sj_datasets) -> None:
    gen = torch.Generator().manual_seed(0)
    batch = [(torch.rand(int(t), 2, 3, generator=gen), int(t) % 11) for t in (3, 1, 5, 5, 2)]
    for ours, ref in zip(pad_sequence_collate(batch), sj_datasets.pad_sequence_collate(batch),
                         strict=True):  # fmt: skip
        assert torch.equal(ours, ref)
    lengths = torch.tensor([3, 1, 5, 5, 2])
    for T in (None, 7):
        assert torch.equal(padded_sequence_mask(lengths, T),
                           sj_datasets.padded_sequence_mask(lengths, T))  # fmt: skip


def test_read_all_of_a_ragged_split_is_every_frame_in_order(store: Path) -> None:
    dataset = FrameDataset(store, "test", raw=True)
    every = dataset.read_all()
    assert every.shape == (dataset.offsets[-1], 2, 64, 64) and every.dtype == np.uint8
    for i in range(len(dataset)):
        np.testing.assert_array_equal(every[dataset.offsets[i] : dataset.offsets[i + 1]],
                                      dataset.read(i))  # fmt: skip
