"""Frame stores of every frame option: ragged stores (samples of different frame counts) in
their documented layout, readable by zarr alone; options side by side; reruns do nothing;
damage found; a custom integrator's store; bad values refused with one line."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import zarr

from dvsgkit.errors import DamagedError, InputError
from dvsgkit.eventcache.layout import event_cache_path
from dvsgkit.eventcache.read import EventCache
from dvsgkit.frames import FrameSpec, integrate
from dvsgkit.framestore import check as checks
from dvsgkit.framestore.build import build_frame_store
from dvsgkit.framestore.read import open_frame_store
from dvsgkit.info import summarize

DURATION = FrameSpec(duration_us="400ms")


@pytest.fixture
def root(tiny_root: Path, copy_root, tmp_path: Path) -> Path:
    return copy_root(tiny_root, tmp_path / "root", with_=("events",))


def build(root: Path, spec: FrameSpec, **kw) -> Path:
    return build_frame_store(root, spec, workers=kw.pop("workers", 1), progress=False, **kw)


def samples(root: Path, split: str) -> list[np.ndarray]:
    with EventCache(event_cache_path(root)) as cache:
        return [cache.sample(split, i) for i in range(cache.num_samples(split))]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_ragged_store_holds_every_frame_and_opens_with_plain_zarr(
    root: Path, zarr_format: int
) -> None:
    path = build(root, DURATION, zarr_format=zarr_format)
    assert path.name == "duration_400000.zarr" and path.outcome == "built"
    group = zarr.open_group(path, mode="r")  # no dvsgkit involved
    assert group.attrs["duration_us"] == 400_000 and group.attrs["T"] is None
    assert group.attrs["frame_axes"] == ["frame", "polarity", "y", "x"]
    for split in ("train", "test"):
        sub = group[split]
        offsets, frames = sub["frame_offsets"][:], sub["frames"]
        assert frames.chunks == (1, 2, 128, 128) and offsets[0] == 0
        assert frames.shape[0] == offsets[-1] == sub.attrs["num_frames"]
        expected = [integrate(ev, DURATION) for ev in samples(root, split)]
        assert len({len(f) for f in expected}) > 1  # ragged indeed
        for i, want in enumerate(expected):
            got = frames[offsets[i] : offsets[i + 1]]
            np.testing.assert_array_equal(got, want)
            assert sub["checksums"][i] == zlib.crc32(got.astype(np.uint8).tobytes())
    assert checks.check(path, samples=True) == []


def test_options_live_side_by_side_and_a_rerun_does_nothing(root: Path) -> None:
    specs = [FrameSpec(4), DURATION, FrameSpec(4, size=32), FrameSpec(bin_us="1s", T=3),
             FrameSpec(bin_us="1s"), FrameSpec(4, denoise_us="10ms")]  # fmt: skip
    paths = [build(root, spec) for spec in specs]
    assert [p.name for p in paths] == [
        "frames_number_4_split_by_number.zarr", "duration_400000.zarr",
        "frames_number_4_split_by_number_size_32.zarr", "bin_1000000_T_3.zarr",
        "bin_1000000.zarr", "frames_number_4_split_by_number_denoise_10000.zarr",
    ]  # fmt: skip
    ids = [zarr.open_group(p, mode="r").attrs["build_id"] for p in paths]
    again = [build(root, spec) for spec in specs]
    assert [p.outcome for p in again] == ["up to date"] * len(specs)
    assert [zarr.open_group(p, mode="r").attrs["build_id"] for p in paths] == ids
    small = open_frame_store(paths[2], "test")["frames"]
    assert small.shape[2:] == (2, 32, 32)
    first = samples(root, "test")[0]
    np.testing.assert_array_equal(small[0], integrate(first, FrameSpec(4, size=32)))
    np.testing.assert_array_equal(open_frame_store(paths[3], "test")["frames"][0],
                                  integrate(first, FrameSpec(bin_us="1s", T=3)))  # fmt: skip


def test_two_workers_write_the_same_ragged_store(root: Path) -> None:
    one = build(root, DURATION)
    ones = {s: open_frame_store(one, s)["frames"][:] for s in ("train", "test")}
    two = build(root, DURATION, workers=2, zarr_format=3)
    assert two.outcome == "rebuilt"  # another Zarr format
    for split, frames in ones.items():
        np.testing.assert_array_equal(open_frame_store(two, split)["frames"][:], frames)


def test_damage_of_a_ragged_store_is_found_and_rebuilt(root: Path) -> None:
    path = build(root, DURATION)
    offsets = open_frame_store(path, "test")["frame_offsets"][:]
    gone = path / "test" / "frames" / f"{offsets[2]}.0.0.0"
    data = gone.read_bytes()
    gone.unlink()
    with pytest.raises(DamagedError, match=rf"test frame {offsets[2]}: chunk file .* missing"):
        open_frame_store(path, "test")
    gone.write_bytes((path / "test" / "frames" / "0.0.0.0").read_bytes())  # another frame's
    from dvsgkit.data import FrameDataset

    dataset = FrameDataset(path, "test")  # the structure is sound: opens
    with pytest.raises(DamagedError, match=r"test sample 2 \(chunks test/frames/.*checksum"):
        dataset[2]
    assert "test sample 2" in summarize(path, verify=True)["damage"][0]
    gone.write_bytes(data)
    edited = zarr.open_array(path / "test" / "frame_offsets", mode="r+")
    edited[1] = edited[1] + 1
    assert checks.check(path, "test") == [
        "test/frame_offsets differ from the store's record (frame_offsets_crc32)"
    ]
    rebuilt = build(root, DURATION)
    assert rebuilt.outcome == "rebuilt" and "frame_offsets" in rebuilt.why
    assert "--duration 400ms" in checks.rebuild_hint(path)


def frame_per_event_pair(events: dict, H: int, W: int) -> np.ndarray:
    """A custom integrator: one frame per two events (float counts, as SpikingJelly's own
    integrators return them)."""
    n = max(1, (len(events["t"]) + 1) // 2)
    frames = np.zeros((n, 2, H, W))
    for k in range(len(events["t"])):
        frames[k // 2, events["p"][k], events["y"][k], events["x"][k]] += 1
    return frames


def test_a_custom_integrator_builds_a_store_named_after_it(root: Path) -> None:
    path = build(root, FrameSpec(size=32), integrate=frame_per_event_pair)
    assert path.name == "frame_per_event_pair_size_32.zarr"
    attrs = dict(zarr.open_group(path, mode="r").attrs)
    assert attrs["integrator"] == "frame_per_event_pair" and attrs["size"] == 32
    assert attrs["integrator_source"]["function"].endswith("test_ragged.frame_per_event_pair")
    assert len(attrs["integrator_source"]["source_sha256"]) == 64
    first = samples(root, "train")[0]
    spec = FrameSpec(size=32, integrator="frame_per_event_pair")
    want = frame_per_event_pair({k: first[k] // (4 if k in "xy" else 1) for k in "txyp"}, 32, 32)
    group = open_frame_store(path, "train")
    np.testing.assert_array_equal(group["frames"][: group["frame_offsets"][1]], want)
    assert build(root, spec).outcome == "up to date"  # current: no function needed
    (path / "train" / "checksums" / "0").unlink()
    with pytest.raises(InputError, match=r"custom integrator frame_per_event_pair and is damaged"
                       r".*in Python, build_frames\("):  # fmt: skip
        build(root, spec)
    assert build(root, spec, integrate=frame_per_event_pair).outcome == "rebuilt"


def test_custom_integrators_that_cannot_be_stored_are_refused(root: Path) -> None:
    with pytest.raises(InputError, match="define it with def"):
        build(root, FrameSpec(), integrate=lambda ev, H, W: np.zeros((1, 2, H, W)))

    def half(events: dict, H: int, W: int) -> np.ndarray:
        return np.full((1, 2, H, W), 0.5)

    with pytest.raises(InputError, match="half returned negative or fractional values for "
                       "sample 0; a custom integrator returns frames"):  # fmt: skip
        build(root, FrameSpec(), integrate=half)
    assert not (root / "half.zarr").exists()
    with pytest.raises(InputError, match="integrate= cuts the frames itself"):
        build(root, DURATION, integrate=half)


@pytest.mark.parametrize("option", ["duration_us", "bin_us"])
def test_a_frame_longer_than_every_sample_is_refused(root: Path, option: str) -> None:
    spans = []
    with EventCache(event_cache_path(root)) as cache:
        for split in ("train", "test"):
            for i in range(cache.num_samples(split)):
                ev = cache.sample(split, i)
                spans.append((int(ev["t"][-1] - ev["t"][0]), split, i))
    longest, split, i = max(spans)
    flag = "--duration" if option == "duration_us" else "--bin"
    with pytest.raises(InputError, match=rf"^{flag} 20s is longer than every sample: the "
                       rf"longest, {split} sample {i} \(.*\), spans {longest / 1e6:g} s; give a "
                       rf"shorter {flag}"):  # fmt: skip
        build(root, FrameSpec(**{option: "20s"}))
    assert not list(root.glob("*.zarr")) and not list(root.glob(".*partial"))
