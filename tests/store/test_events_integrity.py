"""events.h5 integrity: damaged chunks fail their Fletcher-32, changed datasets break the seal."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from dvsgkit.store.event_cache import EventCache
from dvsgkit.store.events import build_event_cache
from dvsgkit.store.frames import build_frame_store
from dvsgkit.store.info import _summarize_events
from dvsgkit.synth import write_synthetic_dataset


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_synthetic_dataset(tmp_path, seed=3, train_trials=2, test_trials=1, events_per_sample=3000)
    build_event_cache(tmp_path, workers=1, progress=False)
    return tmp_path


def chunk_of(path: Path, name: str, event: int) -> tuple[int, int]:
    """(byte offset, stored size) of the chunk of dataset `name` holding element `event`."""
    with h5py.File(path, "r") as f:
        dset = f[name]
        found = []
        dset.id.chunk_iter(lambda c: found.append((c.chunk_offset[0], c.byte_offset, c.size)))
    first, byte, size = max(c for c in found if c[0] <= event)
    return byte, size


def flip_two_bytes(path: Path, name: str, event: int) -> None:
    byte, size = chunk_of(path, name, event)
    data = bytearray(path.read_bytes())
    for k in (byte + size // 3, byte + size // 2):  # inside the compressed payload
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))


def sample_holding(path: Path, split: str, event: int) -> int:
    with EventCache(path) as cache:
        return int(np.searchsorted(cache.offsets(split), event, side="right")) - 1


def test_a_sound_cache_verifies_clean_and_its_seals_match(root: Path) -> None:
    with EventCache(root / "events.h5") as cache:
        assert cache.verify() == []
        cache.check_sealed()
    info = _summarize_events(root / "events.h5", verify=True)
    assert info["complete"] and info["verified"]


def test_two_flipped_bytes_in_a_timestamp_chunk_are_caught_everywhere(root: Path) -> None:
    path = root / "events.h5"
    event = 20000  # a chunk in the middle of the train split (chunks hold 65,536 events)
    with EventCache(path) as cache:
        before = cache.sample("train", sample_holding(path, "train", event))
    flip_two_bytes(path, "train/t", event)
    sample = sample_holding(path, "train", event)

    # Plain h5py (any HDF5 reader): the read fails instead of returning changed timestamps.
    with h5py.File(path, "r") as f, pytest.raises(OSError):
        f["train/t"][event]
    # dvsgkit's reader: one line naming the file, split/dataset and the fix.
    with EventCache(path) as cache:
        with pytest.raises(ValueError, match=r"events\.h5: train/t events .*Fletcher-32.*"
                           r"delete .*events\.h5 and run 'dvsgkit events'"):  # fmt: skip
            cache.sample("train", sample)
        np.testing.assert_array_equal(cache.sample("test", 0)["t"], cache.sample("test", 0)["t"])
        damaged = cache.verify()
    assert len(damaged) == 1 and before.size > 0
    assert f"{path}: train/t[" in damaged[0] and "fails its Fletcher-32 checksum" in damaged[0]
    assert f"samples 0..{sample_holding(path, 'train', 23999)}" not in damaged[0]  # named range
    # info: fine by its cheap checks (the stored checksums are as built), damaged by --verify.
    assert _summarize_events(path)["complete"]
    info = _summarize_events(path, verify=True)
    assert not info["complete"] and "train/t[" in info["problem"]
    # Frame building reads the chunk: one line, not a traceback or changed frames.
    shutil.rmtree(root / "extract")  # no sources: the cache is used as it is
    with pytest.raises(ValueError, match=r"events\.h5: train/t events .*cannot be read.*"
                       r"Fletcher-32.*run 'dvsgkit events'"):  # fmt: skip
        build_frame_store(root, 4, "time", workers=1, progress=False)


def write_pixel(path: Path, split: str, column: str, event: int, value: int) -> None:
    with h5py.File(path, "r+") as f:  # a hand edit: HDF5 writes a fresh, valid checksum
        f[f"{split}/{column}"][event] = value


def test_a_pixel_off_the_sensor_written_by_hand_is_noticed(root: Path) -> None:
    path = root / "events.h5"
    event = 7000
    sample = sample_holding(path, "train", event)
    write_pixel(path, "train", "x", event, 200)

    # info: incomplete, naming the split and sample, cheaply (no --verify).
    info = _summarize_events(path)
    assert not info["complete"]
    assert f"train sample {sample} has x = 200 (event {event}), off the 128x128" in info["problem"]
    with EventCache(path) as cache:
        assert f"train/x[{event}] = 200 (sample {sample}), expected < 128" in "".join(
            cache.verify()
        )
    # frames without the sources: names the file, split and sample.
    extract = root / "extract"
    shutil.move(extract, root / "moved")
    with pytest.raises(ValueError, match=rf"events\.h5: train sample {sample}, event {event} "
                       r"has x = 200, off the 128x128 sensor"):  # fmt: skip
        build_frame_store(root, 4, "number", workers=1, progress=False)
    # events: not up to date; with the sources present it is rebuilt, sound again.
    shutil.move(root / "moved", extract)
    build_event_cache(root, workers=1, progress=False)
    with EventCache(path) as cache:
        assert cache.verify() == [] and int(cache.sample("train", sample)["x"].max()) < 128


@pytest.mark.parametrize("name", ["train/labels", "test/t", "train/offsets", "test/trial"])
def test_any_dataset_changed_after_the_build_breaks_its_seal(root: Path, name: str) -> None:
    path = root / "events.h5"
    with h5py.File(path, "r+") as f:
        dset = f[name]
        old = dset[1]  # each new value still passes the layout checks: only the seal can tell
        if isinstance(old, bytes):
            dset[1] = b"user99_lab"[: len(old)]
        else:
            dset[1] = (old + 1) % 11 if name.endswith("labels") else old + 1
    info = _summarize_events(path)
    assert not info["complete"]
    assert f"{name} changed after the build" in info["problem"]
    stamp = path.stat().st_mtime_ns
    build_event_cache(root, workers=1, progress=False)  # not up to date: rebuilt
    assert path.stat().st_mtime_ns != stamp
    assert _summarize_events(path, verify=True)["complete"]


def test_a_cache_of_layout_2_is_rebuilt(root: Path) -> None:
    path = root / "events.h5"
    with h5py.File(path, "r+") as f:
        f.attrs["layout_version"] = 2
    with pytest.raises(ValueError, match="layout version 3"):
        EventCache(path)
    build_event_cache(root, workers=1, progress=False)
    with EventCache(path) as cache:
        assert cache.attrs["layout_version"] == 3
