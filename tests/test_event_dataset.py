"""EventDataset hands Tonic the samples of events.h5; Tonic's ToFrame then gives the frames of
dvsgkit's own frame store (up to Tonic's documented difference: it drops the N mod T events
that the last frame takes)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dvsgkit.data import TONIC_EVENT_DTYPE, EventDataset, FrameDataset
from dvsgkit.eventcache.layout import event_cache_path
from dvsgkit.eventcache.read import EventCache
from dvsgkit.frames import FrameSpec, integrate
from dvsgkit.framestore.build import frame_store_path

T = 4  # the frame_root fixture's


def test_the_dtype_is_tonics() -> None:
    from tonic.datasets import DVSGesture  # tonic is in the [dev] extra

    assert DVSGesture.dtype == TONIC_EVENT_DTYPE


def test_samples_are_the_event_cache_samples(frame_root: Path) -> None:
    dataset = EventDataset(frame_root, "test")
    with EventCache(event_cache_path(frame_root)) as cache:
        assert len(dataset) == cache.num_samples("test") == 12
        for i in (0, 5, 11):
            events, label = dataset[i]
            sample = cache.sample("test", i)
            assert events.dtype == TONIC_EVENT_DTYPE and label == cache.labels("test")[i]
            for name in "xytp":
                assert np.array_equal(events[name], sample[name].astype(events[name].dtype))
    with pytest.raises(IndexError, match="out of range"):
        dataset[12]
    # A pickled copy (what a DataLoader worker gets) reopens the file and reads the same.
    copy = pickle.loads(pickle.dumps(dataset))
    assert np.array_equal(copy[3][0], dataset[3][0])


def test_tonic_to_frame_gives_the_frame_store_frames(frame_root: Path) -> None:
    from tonic.transforms import ToFrame

    to_frame = ToFrame(sensor_size=(128, 128, 2), n_event_bins=T)
    dataset = EventDataset(frame_root, "test", transform=to_frame)
    raw = EventDataset(frame_root, "test")
    store = FrameDataset(frame_store_path(frame_root, FrameSpec(T, "number")), "test", raw=True)
    assert np.array_equal(store.labels, raw.labels)
    for i in range(len(dataset)):
        tonic_frames, label = dataset[i]  # [T, 2, 128, 128] int16
        ours, our_label = store[i]
        ours = ours.numpy().astype(np.int64)
        assert label == our_label and tonic_frames.shape == ours.shape == (T, 2, 128, 128)
        # Frames 0..T-2 are identical; the last frame also holds the N mod T remainder.
        events = raw[i][0]
        n = len(events)
        assert np.array_equal(tonic_frames[:-1], ours[:-1])
        remainder = np.zeros((2, 128, 128), np.int64)
        tail = events[n - n % T :]
        np.add.at(remainder, (tail["p"].astype(int), tail["y"], tail["x"]), 1)
        assert np.array_equal(tonic_frames[-1] + remainder, ours[-1])
    assert sum(len(raw[i][0]) % T for i in range(len(raw))) > 0  # the remainder case was seen


def test_frame_dataset_transform(frame_root: Path) -> None:
    path = frame_store_path(frame_root, FrameSpec(T, "number"))
    plain = FrameDataset(path, "train")
    flipped = FrameDataset(path, "train", transform=lambda x: torch.flip(x, dims=[-1]))
    frames, label = plain[2]
    got, got_label = flipped[2]
    assert got_label == label and torch.equal(got, torch.flip(frames, dims=[-1]))
    # and the frames are those of the sample's events, integrated
    with EventCache(event_cache_path(frame_root)) as cache:
        expected = integrate(cache.sample("train", 2), FrameSpec(T, "number"))
    assert np.array_equal(frames.numpy(), expected)


def test_a_cache_replaced_under_a_dataset_is_never_read(frame_root: Path, tmp_path: Path) -> None:
    import os
    import shutil

    root = tmp_path / "root"
    root.mkdir()
    shutil.copyfile(event_cache_path(frame_root), root / "events.h5")
    dataset = EventDataset(root, "test")  # labels read from this file
    copy = tmp_path / "copy.h5"
    shutil.copyfile(root / "events.h5", copy)
    os.replace(copy, root / "events.h5")  # `mv` of another file (here: equal bytes) onto it
    fresh = pickle.loads(pickle.dumps(dataset))  # as a DataLoader worker gets it
    with pytest.raises(ValueError, match=rf"{root / 'events.h5'} was replaced while this "
                       r"EventDataset was in use .*create the EventDataset again"):  # fmt: skip
        fresh[0]
    EventDataset(root, "test")[0]  # a new one reads the file now in place
