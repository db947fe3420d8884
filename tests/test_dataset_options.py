"""DVSGesture takes the frame options of `dvsgkit frames` as keywords: each item is the sample's
frames of that option (float32 [T_i, 2, H, W], label), from a store named after every option."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from dvsgkit import DVSGesture
from dvsgkit.eventcache.layout import event_cache_path
from dvsgkit.eventcache.read import EventCache
from dvsgkit.frames import FrameSpec, integrate


@pytest.fixture(scope="module")
def root(tiny_root: Path, copy_root, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_root(tiny_root, tmp_path_factory.mktemp("front_options"), with_=("events",))


@pytest.mark.parametrize(
    ("keywords", "spec", "store"),
    [
        ({"duration": "500ms"}, FrameSpec(duration_us=500_000), "duration_500000"),
        ({"duration": 500_000}, FrameSpec(duration_us=500_000), "duration_500000"),
        ({"bin": "400ms"}, FrameSpec(bin_us=400_000), "bin_400000"),
        ({"bin": "400ms", "T": 6}, FrameSpec(6, bin_us=400_000), "bin_400000_T_6"),
        ({"T": 16, "size": 32}, FrameSpec(16, size=32), "frames_number_16_split_by_number_size_32"),
        ({"T": 16, "denoise": "10ms"}, FrameSpec(16, denoise_us=10_000),
         "frames_number_16_split_by_number_denoise_10000"),
        ({"duration": "1s", "size": 64, "denoise": 20_000},
         FrameSpec(duration_us="1s", size=64, denoise_us="20ms"),
         "duration_1000000_size_64_denoise_20000"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else None,
)  # fmt: skip
def test_keywords_give_each_options_frames(
    root: Path, keywords: dict, spec: FrameSpec, store: str
) -> None:
    data = DVSGesture(root, split="test", progress=False, workers=1, **keywords)
    assert data.spec == spec and (root / f"{store}.zarr").is_dir()
    side = spec.size
    lengths = set()
    with EventCache(event_cache_path(root)) as cache:
        assert len(data) == cache.num_samples("test")
        for i in range(len(data)):
            frames, label = data[i]
            want = integrate(cache.sample("test", i), spec)
            assert frames.dtype == torch.float32 and frames.shape == (len(want), 2, side, side)
            assert torch.equal(frames, torch.from_numpy(want).float())
            assert label == int(cache.labels("test")[i])
            lengths.add(len(want))
    assert (len(lengths) > 1) == spec.ragged  # a ragged option's samples differ in length
    built = zarr.open_group(root / f"{store}.zarr", mode="r").attrs["build_id"]
    DVSGesture(root, split="test", progress=False, workers=1, **keywords)  # a rerun: opened
    assert zarr.open_group(root / f"{store}.zarr", mode="r").attrs["build_id"] == built


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"duration": "0ms"}, "--duration 0ms must be longer than 0"),
        ({"size": 100}, "--size 100 is not a frame size"),
        ({"bin": "10ms", "duration": "50ms"}, "--duration and --bin are different ways"),
        ({"duration": "50ms", "T": 8}, "drop -T"),
    ],
)
def test_bad_keywords_are_refused_before_anything_is_built(
    tmp_path: Path, keywords: dict, message: str
) -> None:
    from dvsgkit.errors import InputError

    with pytest.raises(InputError, match=message):
        DVSGesture(tmp_path, split="test", progress=False, **keywords)
    assert list(tmp_path.iterdir()) == []


def test_event_dataset_is_importable_as_before(root: Path) -> None:
    from dvsgkit.data import EventDataset

    events, label = EventDataset(root, "test")[0]
    assert events.dtype.names == ("x", "y", "p", "t") and isinstance(label, int)
    assert np.all(np.diff(events["t"]) >= 0)
