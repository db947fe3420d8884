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
from dvsgkit.framestore import chunks
from dvsgkit.framestore.build import build_frame_store
from dvsgkit.framestore.chunks import RAGGED_CHUNK_FRAMES, read_chunks
from dvsgkit.framestore.read import open_frame_store
from dvsgkit.info import summarize

DURATION = FrameSpec(duration_us="400ms")
K = RAGGED_CHUNK_FRAMES


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
        assert frames.chunks == (K, 2, 128, 128) and offsets[0] == 0
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


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_ragged_store_writes_one_chunk_file_per_k_frames(
    root: Path, zarr_format: int, run_cli
) -> None:
    spec = FrameSpec(bin_us="100ms")
    path = build(root, spec, zarr_format=zarr_format, workers=2)
    group = zarr.open_group(path, mode="r")
    for split in ("train", "test"):
        sub = group[split]
        frames, offsets = sub["frames"], sub["frame_offsets"][:]
        F = int(offsets[-1])
        assert F % K and F > 2 * K  # a partial last chunk, and a middle one
        files = [f for f in (path / split / "frames").rglob("*") if f.is_file()]
        files = [f for f in files if f.name not in (".zarray", ".zattrs", "zarr.json")]
        assert len(files) == -(-F // K)  # ceil(F / K) chunk files
        expected = np.concatenate([integrate(ev, spec) for ev in samples(root, split)])
        assert expected.shape[0] == F
        np.testing.assert_array_equal(frames[:], expected)  # zarr alone
        stored = open_frame_store(path, split)
        np.testing.assert_array_equal(read_chunks(stored["frames"], path / split / "frames",
                                                  0, F), expected)  # fmt: skip
        from dvsgkit.data import FrameDataset

        dataset = FrameDataset(path, split)
        for i in range(len(offsets) - 1):
            np.testing.assert_array_equal(dataset.frames.read(i),
                                          expected[offsets[i] : offsets[i + 1]])  # fmt: skip
    middle = -(-int(offsets[-1]) // K) // 2  # a chunk of the test split, neither first nor last
    key = group["test"]["frames"].metadata.encode_chunk_key((middle, 0, 0, 0))
    (path / "test" / "frames" / key).unlink()
    code, out = run_cli("info", "--verify", str(path))
    assert code == 1, out
    said = f"test frames {middle * K} to {middle * K + K - 1}: chunk file test/frames/{key} missing"
    assert said in " ".join(out.split()), out
    assert build(root, spec).outcome == "rebuilt"
    assert checks.check(path, samples=True) == []


def test_a_ragged_store_of_one_frame_per_chunk_is_rebuilt(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:  # the chunking of an earlier dvsgkit
        m.setattr(chunks, "RAGGED_CHUNK_FRAMES", 1)
        path = build(root, DURATION)
    assert zarr.open_group(path, mode="r")["train"]["frames"].chunks == (1, 2, 128, 128)
    assert checks.check(path, "train") == [
        f"train/frames has chunks [1, 2, 128, 128], not {K} frames per chunk"
    ]
    rebuilt = build(root, DURATION)
    assert rebuilt.outcome == "rebuilt" and f"not {K} frames per chunk" in rebuilt.why
    assert zarr.open_group(path, mode="r")["train"]["frames"].chunks == (K, 2, 128, 128)
    assert checks.check(path, samples=True) == []


def test_damage_of_a_ragged_store_is_found_and_rebuilt(root: Path) -> None:
    path = build(root, DURATION)
    offsets = open_frame_store(path, "test")["frame_offsets"][:]
    c = int(offsets[2]) // K  # the chunk of sample 2's first frame
    gone, other = (path / "test" / "frames" / f"{j}.0.0.0" for j in (c, 1 - min(c, 1)))
    data = gone.read_bytes()
    gone.unlink()
    last = min(c * K + K, offsets[-1]) - 1
    with pytest.raises(DamagedError, match=rf"test frames {c * K} to {last}: chunk file "
                       rf"test/frames/{c}\.0\.0\.0 missing"):  # fmt: skip
        open_frame_store(path, "test")
    gone.write_bytes(other.read_bytes())  # another chunk's frames
    from dvsgkit.data import FrameDataset

    dataset = FrameDataset(path, "test")  # the structure is sound: opens
    with pytest.raises(DamagedError, match=rf"test sample 2 \(chunks? test/frames/{c}\..*checksum"):
        dataset[2]
    first = int(np.argmax(offsets[1:] > c * K))  # the first sample with a frame in chunk c
    assert summarize(path, verify=True)["damage"][0].startswith(f"test sample {first} (")
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


def counts_above_255_after_the_first(events: dict, H: int, W: int) -> np.ndarray:
    """A custom integrator: 5 frames (60 for 12 samples: a partial last chunk), the last one's
    corner pixel counting the sample's events (hundreds: uint8 overflows)."""
    frames = np.zeros((5, 2, H, W))
    frames[-1, 1, H - 1, W - 1] = len(events["t"])
    frames[2] = 1
    return frames


def test_counts_above_255_widen_a_ragged_store_never_clip(root: Path) -> None:
    path = build(root, FrameSpec(size=32), integrate=counts_above_255_after_the_first)
    group = zarr.open_group(path, mode="r")
    for split in ("train", "test"):
        wanted = [counts_above_255_after_the_first({k: ev[k] // (4 if k in "xy" else 1)
                                                    for k in "txyp"}, 32, 32)
                  for ev in samples(root, split)]  # fmt: skip
        assert max(int(w.max()) for w in wanted) > 255
        frames = group[split]["frames"]
        assert frames.dtype == np.uint16 and frames.shape[0] == 5 * len(wanted)
        np.testing.assert_array_equal(frames[:], np.concatenate(wanted))
    assert checks.check(path, samples=True) == []


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
