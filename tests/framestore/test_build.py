"""The Zarr frame store: content, layout, no-op reruns, rebuilds, atomicity, locking, bad input."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from dvsgkit import fs
from dvsgkit.constants import CLASS_NAMES, EVENT_DTYPE, SPLITS
from dvsgkit.errors import StorageError
from dvsgkit.eventcache import seal as integrity
from dvsgkit.eventcache.read import EventCache
from dvsgkit.frames import FrameSpec, integrate
from dvsgkit.framestore.build import build_frame_store, frame_store_path
from dvsgkit.framestore.read import open_frame_store
from dvsgkit.synth import write_synthetic_dataset

T = 4


def write_events_h5(path: Path, samples: dict[str, list[tuple[np.ndarray, int]]]) -> None:
    """An events.h5 in the documented layout (version 3) from (events, label) per split:
    every dataset with Fletcher-32 and sealed, as the build writes it."""
    with h5py.File(path, "w") as f:
        f.attrs.update(layout="dvsgkit.events", layout_version=3, dvsgkit_version="test")
        f.attrs["sensor_size"] = [128, 128]
        f.attrs["class_names"] = list(CLASS_NAMES)
        f.attrs["sources"] = json.dumps([{"name": "hand-made", "bytes": 0, "sha256": "0"}])
        for split in SPLITS:
            evs = [e for e, _ in samples[split]]
            cat = np.concatenate(evs) if evs else np.zeros(0, EVENT_DTYPE)
            g = f.create_group(split)
            data = {k: cat[k] for k in "txyp"}
            data["offsets"] = np.cumsum([0] + [e.size for e in evs]).astype(np.int64)
            data["labels"] = np.array([lab for _, lab in samples[split]], dtype=np.uint8)
            data["trial"] = np.array([f"user01_lab{i}" for i in range(len(evs))], dtype="S10")
            data["row"] = np.arange(len(evs), dtype=np.int32)
            for name, values in data.items():
                g.create_dataset(name, data=values, chunks=(max(len(values), 1),),
                                 maxshape=(None,), fletcher32=True)  # fmt: skip
        integrity.seal(f, SPLITS)


def events(n: int, x: int = 5, y: int = 7, p: int = 1, t0: int = 0) -> np.ndarray:
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = t0 + np.arange(n), x, y, p
    return ev


def hand_made_root(tmp_path: Path, pixel_events: int = 10) -> Path:
    samples = {
        "train": [(events(pixel_events), 3), (events(40, x=127, y=0, p=0), 0), (events(0), 10)],
        "test": [(events(3, x=0, y=127), 2)],
    }
    write_events_h5(tmp_path / "events.h5", samples)
    return tmp_path


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_store_holds_every_sample_and_opens_with_plain_zarr(
    tiny_root: Path, copy_root, tmp_path: Path, zarr_format: int
) -> None:
    root = copy_root(tiny_root, tmp_path / "root", with_=("events",))
    path = build_frame_store(
        root, FrameSpec(T, "number"), workers=1, progress=False, zarr_format=zarr_format
    )
    assert (
        path
        == root / "frames_number_4_split_by_number.zarr"
        == frame_store_path(root, FrameSpec(T, "number"))
    )
    group = zarr.open_group(path, mode="r")  # no dvsgkit involved
    attrs = dict(group.attrs)
    assert attrs["layout"] == "dvsgkit.frames" and attrs["complete"] is True
    assert attrs["T"] == T and attrs["split_by"] == "number" and attrs["sensor_size"] == [128, 128]
    assert attrs["class_names"] == list(CLASS_NAMES)
    with EventCache(root / "events.h5") as cache:
        assert attrs["events"]["checksum"] == cache.checksum()
        for split in SPLITS:
            frames, labels = group[split]["frames"], group[split]["labels"][:]
            n = cache.num_samples(split)
            assert frames.shape == (n, T, 2, 128, 128) and frames.chunks == (1, T, 2, 128, 128)
            assert frames.dtype == np.uint8
            np.testing.assert_array_equal(labels, cache.labels(split))
            ids = group[split].attrs["sample_ids"]
            assert ids[0] == f"{cache.trials(split)[0]}:{cache.rows(split)[0]}" and len(ids) == n
            for i in range(n):
                np.testing.assert_array_equal(
                    frames[i], integrate(cache.sample(split, i), FrameSpec(T))
                )
    assert sum(group["train"].attrs["class_counts"]) == group["train"]["labels"].shape[0]


def test_time_split_and_two_workers_side_by_side(
    tiny_root: Path, copy_root, tmp_path: Path
) -> None:
    copy_root(tiny_root, tmp_path, with_=("events",))
    number = build_frame_store(tmp_path, FrameSpec(T, "number"), workers=1, progress=False)
    time = build_frame_store(tmp_path, FrameSpec(T, "time"), workers=2, progress=False)
    assert number != time and number.is_dir() and time.is_dir()
    test = open_frame_store(time, "test")
    with EventCache(tmp_path / "events.h5") as cache:
        for i in range(cache.num_samples("test")):
            np.testing.assert_array_equal(
                test["frames"][i], integrate(cache.sample("test", i), FrameSpec(T, "time"))
            )
    assert open_frame_store(number).attrs["T"] == T  # the first store is still complete


def test_rerun_is_a_noop_and_changed_inputs_rebuild(
    tiny_root: Path, copy_root, tmp_path: Path
) -> None:
    root = copy_root(tiny_root, tmp_path / "root", with_=("recordings",))
    path = build_frame_store(root, FrameSpec(T), workers=1, progress=False)
    first = zarr.open_group(path, mode="r").attrs["build_id"]
    assert build_frame_store(root, FrameSpec(T), workers=1, progress=False) == path
    assert zarr.open_group(path, mode="r").attrs["build_id"] == first
    before = zarr.open_group(path, mode="r")["train"]["frames"][:]
    # New recordings: the event cache is refreshed, its checksum changes, the store is rebuilt.
    write_synthetic_dataset(root, seed=5, train_trials=1, test_trials=1, events_per_sample=300)
    build_frame_store(root, FrameSpec(T), workers=1, progress=False)
    group = zarr.open_group(path, mode="r")
    assert group.attrs["build_id"] != first and group.attrs["complete"] is True
    assert not np.array_equal(group["train"]["frames"][:], before)
    assert not list(root.glob("*.partial"))


def test_counts_above_255_widen_the_dtype_never_clip(tmp_path: Path) -> None:
    root = hand_made_root(tmp_path, pixel_events=300 * T)  # 300 events per frame on one pixel
    path = build_frame_store(root, FrameSpec(T), workers=1, progress=False)
    frames = zarr.open_group(path, mode="r")["train"]["frames"]
    assert frames.dtype == np.uint16
    assert frames[0, :, 1, 7, 5].tolist() == [300] * T and frames[0].sum() == 300 * T
    assert frames[1, -1, 0, 0, 127] == 40 - 3 * 10 and frames[2].sum() == 0  # corner, empty
    assert zarr.open_group(path, mode="r")["train"].attrs["max_count"] == 300
    assert zarr.open_group(path, mode="r")["test"]["frames"][0, :, 1, 127, 0].sum() == 3


def test_an_empty_samples_chunk_is_written_so_that_a_missing_one_means_damage(
    tmp_path: Path,
) -> None:
    root = hand_made_root(tmp_path)  # train sample 2 has no events
    path = build_frame_store(root, FrameSpec(T), workers=1, progress=False, zarr_format=2)
    assert (path / "train" / "frames" / "2.0.0.0.0").is_file()
    assert open_frame_store(path, "train")["frames"][2].sum() == 0


def test_failed_build_leaves_no_store_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = hand_made_root(tmp_path)

    def fails(folder: Path) -> int:  # the free-space check after the first block
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(fs, "free_bytes", fails)
    with pytest.raises(RuntimeError, match="simulated"):
        build_frame_store(root, FrameSpec(T), workers=1, progress=False)
    path = frame_store_path(root, FrameSpec(T, "number"))
    assert not path.exists() and not list(root.glob("*.partial"))
    # A complete old store survives a failed rebuild untouched.
    monkeypatch.undo()
    build_frame_store(root, FrameSpec(T), workers=1, progress=False)
    built = zarr.open_group(path, mode="r").attrs["build_id"]
    hand_made_root(root, pixel_events=20)  # other inputs: the store is stale
    monkeypatch.setattr(fs, "free_bytes", fails)
    with pytest.raises(RuntimeError, match="simulated"):
        build_frame_store(root, FrameSpec(T), workers=1, progress=False)
    assert zarr.open_group(path, mode="r").attrs["build_id"] == built
    assert open_frame_store(path, "train")["frames"].shape[0] == 3


@pytest.mark.parametrize("fails", ["metadata", "chunk"])
def test_a_failed_write_removes_the_store_after_zarrs_other_writes_have_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    """zarr writes an array's metadata files, and the chunks of one assignment, concurrently.
    One fails at once (a full disk), the others are slow: they must not recreate files after
    the build has removed its folder."""
    root = hand_made_root(tmp_path)
    real_set, in_flight, failed = zarr.storage.LocalStore.set, [], []

    def metadata(key: str) -> bool:
        return key.rsplit("/", 1)[-1] in (".zarray", ".zattrs", ".zgroup", "zarr.json")

    async def slow_disk(self: zarr.storage.LocalStore, key: str, value: object) -> None:
        path = (self.root / key).as_posix()  # a block's chunks go through the array's own store
        if "/train/frames/" not in path or metadata(key) != (fails == "metadata"):
            return await real_set(self, key, value)
        if not failed:
            failed.append(key)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        in_flight.append(key)
        await asyncio.sleep(0.3)
        await real_set(self, key, value)
        in_flight.remove(key)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", slow_disk)
    with pytest.raises(StorageError, match="no space left on device"):
        build_frame_store(root, FrameSpec(T), workers=1, progress=False)
    assert failed and in_flight == []  # nothing was still writing when the build gave up
    time.sleep(0.5)
    assert [p.name for p in root.iterdir() if "frames" in p.name] == []  # nor its lock file


def test_event_cache_replaced_during_the_build_leaves_no_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = hand_made_root(tmp_path)
    (tmp_path / "other").mkdir()
    other = hand_made_root(tmp_path / "other", pixel_events=20)  # other samples

    def concurrent_events_rebuild(folder: Path) -> int:  # after the first block
        os.replace(other / "events.h5", root / "events.h5")  # as another 'dvsgkit events' ends
        return 1 << 40

    monkeypatch.setattr(fs, "free_bytes", concurrent_events_rebuild)
    with pytest.raises(ValueError, match=r"events\.h5 was replaced while the frames were being"):
        build_frame_store(root, FrameSpec(T), workers=1, progress=False)
    assert not frame_store_path(root, FrameSpec(T, "number")).exists()
    assert not list(root.glob("*.partial"))


def test_leftovers_of_a_killed_build_never_look_complete_and_are_cleared(tmp_path: Path) -> None:
    root = hand_made_root(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid names no process now
    killed = root / f".frames_number_4_split_by_number.zarr.{gone.pid}-0a1b2c.partial"
    # A build elsewhere (another machine sharing the folder) killed while its pid lives here:
    # a leftover all the same, since no build can be at work while this one holds the lock.
    elsewhere = root / f".frames_number_4_split_by_number.zarr.{os.getpid()}-3d4e5f.partial"
    for leftover in (killed, elsewhere):
        zarr.open_group(leftover, mode="w").attrs["layout"] = "dvsgkit.frames"
    with pytest.raises(FileNotFoundError, match="not found"):
        open_frame_store(frame_store_path(root, FrameSpec(T, "number")))
    build_frame_store(root, FrameSpec(T), workers=1, progress=False)
    assert not killed.exists() and not elsewhere.exists()


def test_concurrent_builds_of_one_store_both_succeed_once(tmp_path: Path) -> None:
    root = hand_made_root(tmp_path)
    code = (
        "import sys, zarr; from pathlib import Path; "
        "from dvsgkit.framestore.build import build_frame_store as b; "
        "from dvsgkit.frames import FrameSpec; "
        f"p = b(Path(sys.argv[1]), FrameSpec({T}), workers=1, progress=False); "
        "print(zarr.open_group(p, mode='r').attrs['build_id'])"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    ids = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert ids[0] == ids[1]  # the second waited for the lock, then found the store current
    assert (
        open_frame_store(frame_store_path(root, FrameSpec(T, "number")), "test")["labels"][0] == 2
    )


@pytest.mark.parametrize(
    ("T_", "split_by", "match"),
    [(0, "number", "T .*>= 1, got 0"), (-1, "time", "got -1"), (16, "space", "'space'")],
)
def test_bad_parameters(tmp_path: Path, T_: int, split_by: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_frame_store(
            hand_made_root(tmp_path), FrameSpec(T_, split_by), workers=1, progress=False
        )
    assert not list(tmp_path.glob("*.zarr"))


def test_missing_event_cache_and_no_recordings(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"extract.*not found.*dvsgkit download"):
        build_frame_store(tmp_path, FrameSpec(T), workers=1, progress=False)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no_layout", "bad_offsets"])
def test_corrupted_event_cache_is_reported_and_left_alone(tmp_path: Path, damage: str) -> None:
    root = hand_made_root(tmp_path)
    h5 = root / "events.h5"
    if damage == "garbage":
        h5.write_bytes(b"not an HDF5 file at all" * 100)
    elif damage == "truncated":
        h5.write_bytes(h5.read_bytes()[:2000])
    else:
        with h5py.File(h5, "r+") as f:
            if damage == "no_layout":
                del f.attrs["layout"]
            else:
                f["train"]["offsets"][-1] = 10**6
    before = h5.read_bytes()
    with pytest.raises(ValueError, match=str(h5)):
        build_frame_store(root, FrameSpec(T), workers=1, progress=False)
    assert h5.read_bytes() == before and not list(root.glob("*.zarr"))


def test_a_path_holding_another_store_or_foreign_data_is_not_overwritten(tmp_path: Path) -> None:
    root = hand_made_root(tmp_path)
    other = build_frame_store(root, FrameSpec(2), workers=1, progress=False)
    target = frame_store_path(root, FrameSpec(T, "number"))
    other.rename(target)  # a T=2 store under the T=4 name
    with pytest.raises(FileExistsError, match=r"another configuration \(T=2.*move it away"):
        build_frame_store(root, FrameSpec(T), workers=1, progress=False)
    assert zarr.open_group(target, mode="r").attrs["T"] == 2
    foreign = frame_store_path(root, FrameSpec(8, "time"))
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a"):
        build_frame_store(root, FrameSpec(8, "time"), workers=1, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_open_reports_a_missing_split_and_an_incomplete_store(tmp_path: Path) -> None:
    root = hand_made_root(tmp_path)
    path = build_frame_store(root, FrameSpec(T), workers=1, progress=False)
    group = zarr.open_group(path, mode="r+")
    del group["test"]
    with pytest.raises(ValueError, match=rf"{path} is damaged: split 'test' missing; rebuild"):
        open_frame_store(path, "test")
    open_frame_store(path, "train")
    group.attrs["complete"] = False
    with pytest.raises(ValueError, match="incomplete"):
        open_frame_store(path)
    build_frame_store(root, FrameSpec(T), workers=1, progress=False)  # incomplete but ours: rebuilt
    assert open_frame_store(path, "test")["labels"].shape == (1,)
    with pytest.raises(ValueError, match="split must be one of"):
        open_frame_store(path, "validation")
