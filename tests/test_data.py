"""FrameDataset and make_loader over a real (tiny, synthetic) frame store; EventDataset hands
Tonic the samples of events.h5, and Tonic's ToFrame then gives the frames of dvsgkit's own frame
store (up to Tonic's documented difference: it drops the N mod T events that the last frame
takes)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from dvsgkit.data import TONIC_EVENT_DTYPE, EventDataset, FrameDataset, make_loader
from dvsgkit.eventcache.layout import event_cache_path
from dvsgkit.eventcache.read import EventCache
from dvsgkit.frames import FrameSpec, integrate
from dvsgkit.framestore.build import frame_store_path
from dvsgkit.framestore.check import array_checksum, sample_checksum

T = 4


def served(loader, epoch: int) -> list[int]:
    """The sample indices `loader` serves in `epoch`, in order."""
    loader.sampler.set_epoch(epoch)
    return [i for batch in loader.batches for i in batch]


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def store(small_root: Path) -> Path:
    """24 train + 12 test samples at T=4: the shared small root's frame store."""
    return frame_store_path(small_root, FrameSpec(T))


def test_dataset_items_are_float_frames_and_int_labels(store: Path) -> None:
    ds = FrameDataset(store, "train")
    group = zarr.open_group(store, mode="r")["train"]
    assert len(ds) == group["labels"].shape[0] == 24
    frames, label = ds[5]
    assert frames.dtype == torch.float32 and frames.shape == (T, 2, 128, 128)
    assert isinstance(label, int) and label == int(group["labels"][5])
    np.testing.assert_array_equal(frames.numpy(), group["frames"][5].astype(np.float32))
    assert ds[-1][1] == ds[23][1]
    with pytest.raises(IndexError, match="sample 24 out of range"):
        ds[24]


def test_dataset_works_in_a_dataloader_with_a_worker_process(store: Path) -> None:
    ds = FrameDataset(store, "test")
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=1)
    frames, labels = next(iter(loader))
    assert frames.shape == (5, T, 2, 128, 128) and frames.dtype == torch.float32
    assert labels.tolist() == [ds[i][1] for i in range(5)]
    assert torch.equal(frames[3], ds[3][0])


@pytest.mark.parametrize("device", DEVICES)
def test_memory_and_stream_modes_serve_the_same_batches(store: Path, device: str) -> None:
    kw = dict(shuffle=True, drop_last=True, device=device, seed=7)
    memory = make_loader(store, "train", 5, **kw)
    stream = make_loader(store, "train", 5, memory_budget=0, **kw)
    assert (memory.mode, stream.mode) == ("memory", "stream")
    assert len(memory) == len(stream) == 24 // 5 and memory.num_samples == 24
    ds = FrameDataset(store, "train")
    order = served(memory, 0)
    seen = []
    for (xm, ym), (xs, ys) in zip(memory, stream, strict=True):
        assert xm.dtype == torch.float32 and ym.dtype == torch.int64
        assert xm.shape == (5, T, 2, 128, 128) and xm.device.type == device
        assert torch.equal(xm, xs) and torch.equal(ym, ys)
        for x, y in zip(xm, ym, strict=True):  # row k is stored sample order[k], with its label
            i = order[len(seen)]
            assert torch.equal(ds[i][0].to(device), x) and ds[i][1] == int(y)
            seen.append(i)
    assert len(seen) == 20


def test_persistent_stream_workers_follow_each_epoch(store: Path) -> None:
    kw = dict(shuffle=True, drop_last=False, seed=4)
    memory = make_loader(store, "train", 5, **kw)
    stream = make_loader(store, "train", 5, memory_budget=0, workers=1, **kw)
    for epoch in (0, 1, 5, None):  # None: the pass after 5, without set_epoch
        if epoch is not None:
            memory.set_epoch(epoch)
            stream.set_epoch(epoch)
        pairs = list(zip(memory, stream, strict=True))
        assert [len(y) for (_, y), _ in pairs] == [5, 5, 5, 5, 4]
        for (xm, ym), (xs, ys) in pairs:
            assert torch.equal(xm, xs) and torch.equal(ym, ys) and xs.dtype == torch.float32


def test_order_is_a_function_of_seed_and_epoch(store: Path) -> None:
    def order(loader) -> list[int]:
        return served(loader, loader.epoch)

    a = make_loader(store, "train", 4, shuffle=True, drop_last=False, seed=1)
    first = order(a)
    assert sorted(first) == list(range(24)) and first != list(range(24))
    list(a)  # a full pass advances the epoch: a new order without set_epoch
    assert order(a) != first
    b = make_loader(store, "train", 4, shuffle=True, drop_last=False, seed=1)
    b.set_epoch(1)  # a resumed run at epoch 1 sees what a saw at epoch 1
    assert order(b) == order(a)
    b.set_epoch(0)
    labels_b = torch.cat([y for _, y in b])
    labels = torch.from_numpy(FrameDataset(store, "train").labels)
    assert torch.equal(labels_b, labels[first])
    c = make_loader(store, "train", 4, shuffle=True, drop_last=False, seed=2)
    assert order(c) != first
    test = make_loader(store, "test", 5, shuffle=False, drop_last=False)
    assert len(test) == 3 and [len(y) for _, y in test] == [5, 5, 2]
    assert served(test, 0) == served(test, 9) == list(range(12))


@pytest.mark.parametrize(("drop_last", "per_rank"), [(True, 2), (False, 3)])
def test_ranks_get_disjoint_equal_shares(store: Path, drop_last: bool, per_rank: int) -> None:
    # 12 test samples over 5 ranks: drop the tail (2 each) or pad with repeats (3 each).
    shares = [
        served(
            make_loader(
                store, "test", 2, shuffle=True, drop_last=drop_last, seed=3, rank=r, world_size=5
            ),
            4,
        )  # fmt: skip
        for r in range(5)
    ]
    assert all(len(s) == per_rank for s in shares)
    flat = np.concatenate(shares)
    if drop_last:
        assert len(set(flat.tolist())) == len(flat) == 10
    else:
        assert set(flat.tolist()) == set(range(12)) and len(flat) == 15
    three = [
        make_loader(store, "test", 2, shuffle=True, drop_last=True, rank=r, world_size=3)
        for r in range(3)
    ]
    parts = [set(served(loader, 0)) for loader in three]
    assert set.union(*parts) == set(range(12)) and sum(map(len, parts)) == 12
    assert three[0].num_samples == 4 and len(three[0]) == 2


def test_wide_counts_load_exactly(tiny_root: Path, copy_root, tmp_path: Path) -> None:
    root = copy_root(tiny_root, tmp_path, with_=("frames",))
    path = frame_store_path(root, FrameSpec(T))
    # Turn the store's train frames into uint16 values above 255, as a dense sample would give.
    group = zarr.open_group(path, mode="r+")["train"]
    frames = group["frames"][:].astype(np.uint16) * 300
    del group["frames"]
    group.create_array("frames", data=frames, chunks=(1, T, 2, 128, 128))
    sums = np.array([sample_checksum(f) for f in frames], np.uint32)  # the store's record
    group["checksums"][:] = sums
    group.attrs.update(
        max_count=int(frames.max()), dtype="uint16", checksums_crc32=array_checksum(sums)
    )
    x, _ = next(iter(make_loader(path, "train", 12, shuffle=False, drop_last=False)))
    np.testing.assert_array_equal(x.numpy(), frames[:12].astype(np.float32))
    assert x.max() > 255


def test_bad_input_names_the_path(store: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.zarr not found"):
        make_loader(tmp_path / "nowhere.zarr", "train", 4, shuffle=True, drop_last=True)
    with pytest.raises(ValueError, match="split must be one of"):
        FrameDataset(store, "validation")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        make_loader(store, "train", 0, shuffle=True, drop_last=True)
    with pytest.raises(ValueError, match="rank 2, world 2"):
        make_loader(store, "train", 4, shuffle=True, drop_last=True, rank=2, world_size=2)


FRAME_ROOT_T = 4  # the frame_root fixture's


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

    to_frame = ToFrame(sensor_size=(128, 128, 2), n_event_bins=FRAME_ROOT_T)
    dataset = EventDataset(frame_root, "test", transform=to_frame)
    raw = EventDataset(frame_root, "test")
    store = FrameDataset(
        frame_store_path(frame_root, FrameSpec(FRAME_ROOT_T, "number")), "test", raw=True
    )
    assert np.array_equal(store.labels, raw.labels)
    for i in range(len(dataset)):
        tonic_frames, label = dataset[i]  # [T, 2, 128, 128] int16
        ours, our_label = store[i]
        ours = ours.numpy().astype(np.int64)
        assert label == our_label and tonic_frames.shape == ours.shape == (
            FRAME_ROOT_T,
            2,
            128,
            128,
        )
        # Frames 0..T-2 are identical; the last frame also holds the N mod T remainder.
        events = raw[i][0]
        n = len(events)
        assert np.array_equal(tonic_frames[:-1], ours[:-1])
        remainder = np.zeros((2, 128, 128), np.int64)
        tail = events[n - n % FRAME_ROOT_T :]
        np.add.at(remainder, (tail["p"].astype(int), tail["y"], tail["x"]), 1)
        assert np.array_equal(tonic_frames[-1] + remainder, ours[-1])
    assert (
        sum(len(raw[i][0]) % FRAME_ROOT_T for i in range(len(raw))) > 0
    )  # the remainder case was seen


def test_frame_dataset_transform(frame_root: Path) -> None:
    path = frame_store_path(frame_root, FrameSpec(FRAME_ROOT_T, "number"))
    plain = FrameDataset(path, "train")
    flipped = FrameDataset(path, "train", transform=lambda x: torch.flip(x, dims=[-1]),
                           target_transform=lambda y: y + 100)  # fmt: skip
    frames, label = plain[2]
    got, got_label = flipped[2]
    assert got_label == label + 100 and torch.equal(got, torch.flip(frames, dims=[-1]))
    # and the frames are those of the sample's events, integrated
    with EventCache(event_cache_path(frame_root)) as cache:
        expected = integrate(cache.sample("train", 2), FrameSpec(FRAME_ROOT_T, "number"))
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
