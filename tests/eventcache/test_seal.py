"""events.h5 integrity: damaged chunks fail their Fletcher-32, changed datasets break the seal."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from dvsgkit import fs
from dvsgkit.eventcache.build import build_event_cache
from dvsgkit.eventcache.read import EventCache
from dvsgkit.frames import FrameSpec
from dvsgkit.framestore.build import build_frame_store
from dvsgkit.info import summarize
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
    info = summarize(root / "events.h5", verify=True)
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
    assert summarize(path)["complete"]
    info = summarize(path, verify=True)
    assert not info["complete"] and "train/t[" in info["problem"]
    # Frame building reads the chunk: one line, not a traceback or changed frames.
    shutil.rmtree(root / "extract")  # no sources: the cache is used as it is
    with pytest.raises(ValueError, match=r"events\.h5: train/t events .*cannot be read.*"
                       r"Fletcher-32.*run 'dvsgkit events'"):  # fmt: skip
        build_frame_store(root, FrameSpec(4, "time"), workers=1, progress=False)


def write_pixel(path: Path, split: str, column: str, event: int, value: int) -> None:
    with h5py.File(path, "r+") as f:  # a hand edit: HDF5 writes a fresh, valid checksum
        f[f"{split}/{column}"][event] = value


def test_a_pixel_off_the_sensor_written_by_hand_is_noticed(root: Path) -> None:
    path = root / "events.h5"
    event = 7000
    sample = sample_holding(path, "train", event)
    write_pixel(path, "train", "x", event, 200)

    # info: incomplete, naming the split and sample, cheaply (no --verify).
    info = summarize(path)
    assert not info["complete"]
    assert f"train sample {sample} has x = 200 (event {event}), off the 128x128" in info["problem"]
    with EventCache(path) as cache:
        assert f"train/x[{event}] = 200 (sample {sample}), expected < 128" in "".join(
            cache.verify()
        )
    # frames without the sources: the same line as info, before any frame is built.
    extract = root / "extract"
    shutil.move(extract, root / "moved")
    with pytest.raises(ValueError, match=rf"events\.h5: train sample {sample} has x = 200 "
                       rf"\(event {event}\), off the 128x128 sensor; train/x was"):  # fmt: skip
        build_frame_store(root, FrameSpec(4, "number"), workers=1, progress=False)
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
    info = summarize(path)
    assert not info["complete"]
    assert f"{name} changed after the build" in info["problem"]
    stamp = path.stat().st_mtime_ns
    build_event_cache(root, workers=1, progress=False)  # not up to date: rebuilt
    assert path.stat().st_mtime_ns != stamp
    assert summarize(path, verify=True)["complete"]


def test_a_cache_of_layout_2_is_rebuilt(root: Path) -> None:
    path = root / "events.h5"
    with h5py.File(path, "r+") as f:
        f.attrs["layout_version"] = 2
    with pytest.raises(ValueError, match="layout version 3"):
        EventCache(path)
    build_event_cache(root, workers=1, progress=False)
    with EventCache(path) as cache:
        assert cache.attrs["layout_version"] == 3


def swap_chunks(path: Path, name: str) -> None:
    """Swap the stored bytes of the first two chunks of `name` (a misdirected write): each
    keeps a valid Fletcher-32, so HDF5 reads both without complaint."""
    (a, size), (b, other) = chunk_of(path, name, 0), chunk_of(path, name, 65536)
    assert size == other
    data = bytearray(path.read_bytes())
    data[a : a + size], data[b : b + size] = data[b : b + size], data[a : a + size]
    path.write_bytes(bytes(data))


def edit_labels(path: Path) -> None:
    with h5py.File(path, "r+") as f:  # valid checksums, labels still 0..10
        f["train/labels"][0] = (f["train/labels"][0] + 1) % 11


@pytest.mark.parametrize("damage", ["edited labels", "swapped chunks"])
def test_a_changed_cache_is_refused_by_every_build_when_the_recordings_are_gone(
    root: Path, damage: str
) -> None:
    from click.testing import CliRunner

    from dvsgkit.data import EventDataset
    from dvsgkit_cli.main import cli

    path = root / "events.h5"
    shutil.rmtree(root / "extract")  # users delete the recordings once the cache is built
    if damage == "edited labels":
        edit_labels(path)
        changed = "train/labels"
    else:
        swap_chunks(path, "train/x")
        with h5py.File(path, "r") as f:
            f["train/x"][:]  # every chunk passes its Fletcher-32: only the seal can tell
        changed = "train/x"
    line = rf"{path}: {changed} changed after the build .*delete {path} and run 'dvsgkit events'"
    for split_by in ("number", "time"):
        with pytest.raises(ValueError, match=line):
            build_frame_store(root, FrameSpec(4, split_by), workers=1, progress=False)
    assert not list(root.glob("*.zarr"))
    with pytest.raises(ValueError, match=line):
        EventDataset(root, "test")  # the readers that feed training check it too
    result = CliRunner().invoke(cli, ["frames", "--root", str(root), "-T", "4", "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert f"{changed} changed after the build" in result.output


@pytest.mark.parametrize(
    "when", ["while its index is read", "before the first block", "between blocks",
             "in place, after the last block"],
)  # fmt: skip
def test_a_cache_replaced_during_a_frame_build_never_mixes_into_a_store(
    root: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:  # fmt: skip
    other_root = tmp_path_factory.mktemp("other")
    # More events than the first: reads past its samples succeed, so nothing else would stop it.
    write_synthetic_dataset(other_root, seed=9, train_trials=3, test_trials=2,
                            events_per_sample=4000)  # fmt: skip
    other = build_event_cache(other_root, workers=1, progress=False)
    path = root / "events.h5"
    shutil.rmtree(root / "extract")
    replaced: list[bool] = []

    def replace() -> None:  # what `mv` or `rsync` do: a new file under the same name
        if not replaced:
            replaced.append(True)
            if when.startswith("in place"):  # rsync --inplace: same inode, a write, new time
                with open(path, "r+b") as f:
                    head = f.read(8)
                    f.seek(0)
                    f.write(head)  # the same bytes: only the time tells
                return
            staged = root / "incoming.h5"
            shutil.copyfile(other, staged)
            os.replace(staged, path)

    if when == "while its index is read":
        real_init = EventCache.__init__

        def init(self: EventCache, *args: object, **kwargs: object) -> None:
            real_init(self, *args, **kwargs)
            replace()

        monkeypatch.setattr(EventCache, "__init__", init)
    elif when == "between blocks":  # the free-space check after the first block
        monkeypatch.setattr(fs, "free_bytes", lambda folder: replace() or 1 << 40)
    else:  # the store's own writes: its labels come before any block, "complete" after all
        real_set = zarr.storage.LocalStore.set
        trigger = "/train/labels/" if when == "before the first block" else '"complete": true'

        async def write(store: zarr.storage.LocalStore, key: str, value: object) -> None:
            if trigger in f"/{key}" or trigger.encode() in value.to_bytes():  # type: ignore[attr-defined]
                replace()
            await real_set(store, key, value)

        monkeypatch.setattr(zarr.storage.LocalStore, "set", write)
    with pytest.raises(ValueError, match=rf"{path} was replaced while .*; nothing was built from "
                       r"it: rerun"):  # fmt: skip
        build_frame_store(root, FrameSpec(4, "number"), workers=1, progress=False)
    assert replaced and not list(root.glob("*.zarr"))
    monkeypatch.undo()
    # The rerun builds from the cache now in place: its samples, and its checksum recorded.
    store_path = build_frame_store(root, FrameSpec(4, "number"), workers=1, progress=False)
    group = zarr.open_group(store_path, mode="r")
    with EventCache(path) as cache:
        assert group.attrs["events"]["checksum"] == cache.checksum()
        for split in ("train", "test"):
            np.testing.assert_array_equal(group[split]["labels"][:], cache.labels(split))
    assert summarize(store_path, verify=True)["complete"]


def test_reading_past_the_end_of_a_split_names_the_file(root: Path) -> None:
    path = root / "events.h5"
    with EventCache(path) as cache:
        n = int(cache.offsets("test")[-1])
        with pytest.raises(ValueError, match=rf"{path}: test/x holds {n} events, fewer than "
                           rf"the {n + 10} that events \[0, {n + 10}\) need.*delete"):  # fmt: skip
            cache.columns("test", ("x",), 0, n + 10)
