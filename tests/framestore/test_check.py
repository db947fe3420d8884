"""A damaged frame store is found (on open, by the build's up-to-date check, by info --verify and
on every read) and named, never read as zeros or as fewer samples; the build rebuilds it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from dvsgkit import fs
from dvsgkit.data import FrameDataset, make_loader
from dvsgkit.errors import DamagedError
from dvsgkit.eventcache.read import EventCache
from dvsgkit.frames import FrameSpec, integrate
from dvsgkit.framestore import check as checks
from dvsgkit.framestore.build import build_frame_store
from dvsgkit.framestore.read import open_frame_store
from dvsgkit.info import summarize

T = 4


@pytest.fixture(scope="module")
def events_h5(tiny_root: Path) -> Path:
    """12 train + 12 test synthetic samples in an event cache (the shared tiny root's: read it,
    never write it)."""
    return tiny_root / "events.h5"


def built(tmp_path: Path, events_h5: Path, zarr_format: int = 2) -> Path:
    (tmp_path / "events.h5").symlink_to(events_h5)
    return build_frame_store(
        tmp_path, FrameSpec(T), workers=1, progress=False, zarr_format=zarr_format
    )


def chunk(path: Path, split: str, i: int) -> Path:
    frames = zarr.open_group(path, mode="r")[split]["frames"]
    return path / split / "frames" / frames.metadata.encode_chunk_key((i, 0, 0, 0, 0))


def status(path: Path, events_h5: Path) -> tuple[str, str]:
    with EventCache(events_h5) as cache:
        return checks.status(path, FrameSpec(T), cache.checksum(), None, False)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_deleted_chunk_is_damage_not_zeros_and_the_build_replaces_it(
    tmp_path: Path, events_h5: Path, zarr_format: int
) -> None:
    path = built(tmp_path, events_h5, zarr_format)
    gone = chunk(path, "test", 3)
    gone.unlink()
    assert zarr.open_group(path, mode="r")["test"]["frames"][3].sum() == 0  # what zarr reads
    key = gone.relative_to(path).as_posix()
    with pytest.raises(DamagedError, match=rf"test sample 3: chunk file {key} missing"):
        open_frame_store(path, "test")
    with pytest.raises(DamagedError, match=f"{path} is damaged"):
        FrameDataset(path, "test")
    open_frame_store(path, "train")  # the intact split still opens
    assert status(path, events_h5) == (
        "damaged",
        f"damaged: test sample 3: chunk file {key} missing",
    )
    info = summarize(path)
    assert not info["complete"] and key in info["problem"]
    build = build_frame_store(
        tmp_path, FrameSpec(T), workers=1, progress=False, zarr_format=zarr_format
    )
    assert build.outcome == "rebuilt" and key in build.why
    with EventCache(events_h5) as cache:
        np.testing.assert_array_equal(
            open_frame_store(path, "test")["frames"][3],
            integrate(cache.sample("test", 3), FrameSpec(T)),
        )
    assert (
        build_frame_store(tmp_path, FrameSpec(T), workers=1, progress=False).outcome == "up to date"
    )


def edit_shape(path: Path, split: str, n: int) -> None:
    meta = path / split / "frames" / ".zarray"
    if not meta.is_file():
        meta = path / split / "frames" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"][0] = n
    meta.write_text(json.dumps(doc))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_an_edited_shape_is_damage_not_fewer_samples(
    tmp_path: Path, events_h5: Path, zarr_format: int
) -> None:
    path = built(tmp_path, events_h5, zarr_format)
    edit_shape(path, "test", 5)
    with pytest.raises(DamagedError, match=r"test/frames is uint8 \[5, 4, 2, 128, 128\], the"
                       r" store records uint8 \[12, 4, 2, 128, 128\]"):  # fmt: skip
        make_loader(path, "test", 4, shuffle=False, drop_last=False)
    assert status(path, events_h5)[0] == "damaged"
    assert build_frame_store(tmp_path, FrameSpec(T), workers=1, progress=False).outcome == "rebuilt"
    assert len(FrameDataset(path, "test")) == 12


def test_a_deleted_array_metadata_file_is_rebuilt_not_up_to_date(
    tmp_path: Path, events_h5: Path
) -> None:
    path = built(tmp_path, events_h5)
    (path / "test" / "frames" / ".zarray").unlink()
    with pytest.raises(DamagedError, match=r"test/frames missing; rebuild it with 'dvsgkit"):
        open_frame_store(path, "test")
    assert build_frame_store(tmp_path, FrameSpec(T), workers=1, progress=False).outcome == "rebuilt"
    assert open_frame_store(path, "test")["frames"].shape[0] == 12


@pytest.mark.parametrize(
    "meta", [".zattrs", "test/.zattrs", "test/frames/.zarray", "train/labels/.zarray"]
)
def test_metadata_that_is_not_json_is_named(tmp_path: Path, events_h5: Path, meta: str) -> None:
    path = built(tmp_path, events_h5)
    (path / meta).write_bytes(b'{"zarr_format": 2, "shape": [12, ')
    with pytest.raises(DamagedError, match=rf"{path / meta} is not valid JSON .*rebuild it"):
        FrameDataset(path, "test")
    if meta == ".zattrs":  # nothing to summarise
        with pytest.raises(DamagedError, match=rf"{path / meta} is not valid JSON"):
            summarize(path)
    else:
        info = summarize(path)
        assert not info["complete"] and info["damage"][0].startswith(f"{path / meta} is not")
    assert checks.check(path)[0].startswith(f"{path / meta} is not valid JSON")
    if meta == ".zattrs":  # the root's record itself: whose store this is cannot be known
        with pytest.raises(FileExistsError, match=rf"{path / meta} is not valid JSON .*delete it"):
            build_frame_store(tmp_path, FrameSpec(T), workers=1, progress=False)
    else:
        assert (
            build_frame_store(tmp_path, FrameSpec(T), workers=1, progress=False).outcome
            == "rebuilt"
        )
        FrameDataset(path, "test")


def test_metadata_that_is_not_json_is_named_in_format_3(tmp_path: Path, events_h5: Path) -> None:
    path = built(tmp_path, events_h5, zarr_format=3)
    meta = path / "test" / "frames" / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:40])
    with pytest.raises(DamagedError, match=rf"{meta} is not valid JSON"):
        open_frame_store(path)
    assert build_frame_store(tmp_path, FrameSpec(T), workers=1, progress=False).outcome == "rebuilt"


def test_a_chunk_with_other_content_fails_its_checksum_on_read(
    tmp_path: Path, events_h5: Path
) -> None:
    path = built(tmp_path, events_h5)
    shutil.copyfile(chunk(path, "test", 1), chunk(path, "test", 2))  # decodes, wrong sample
    ds = FrameDataset(path, "test")  # structure intact: opens
    ds[1]
    key = chunk(path, "test", 2).relative_to(path).as_posix()
    with pytest.raises(DamagedError, match=rf"test sample 2 \(chunk {key}\) does not match"):
        ds[2]
    with pytest.raises(DamagedError, match="test sample 2"):
        make_loader(path, "test", 4, shuffle=False, drop_last=False)  # memory mode reads all
    info = summarize(path, verify=True)
    assert info["verified"] == 24 and len(info["damage"]) == 1 and key in info["damage"][0]
    assert not info["complete"]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_corrupt_chunk_is_named_in_a_streaming_loader_with_workers(
    tmp_path: Path, events_h5: Path, damage: str
) -> None:
    path = built(tmp_path, events_h5)
    bad = chunk(path, "train", 5)
    data = bytearray(bad.read_bytes())
    if damage == "flip":
        for k in range(16, len(data), 7):
            data[k] ^= 0xFF
    else:
        del data[len(data) // 2 :]
    bad.write_bytes(bytes(data))
    loader = make_loader(
        path, "train", 4, shuffle=False, drop_last=False, memory_budget=0, workers=1
    )
    key = bad.relative_to(path).as_posix()
    with pytest.raises(DamagedError) as err:
        list(loader)
    line = str(err.value)
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"{path} is damaged: train sample 5 (chunk {key})")
    assert "rebuild it with 'dvsgkit frames" in line and "dvsgkit info --verify" in line
    info = summarize(path, verify=True)
    assert [p.split(" (chunk")[0] for p in info["damage"]] == ["train sample 5"]


@pytest.mark.parametrize("array", ["labels", "checksums"])
def test_a_corrupt_labels_or_checksums_chunk_is_named_on_open(
    tmp_path: Path, events_h5: Path, array: str
) -> None:
    path = built(tmp_path, events_h5)
    (part,) = [p for p in (path / "train" / array).iterdir() if not p.name.startswith(".")]
    data = bytearray(part.read_bytes())
    data[3] ^= 0x01
    part.write_bytes(bytes(data))
    with pytest.raises(DamagedError, match=rf"train/{array} differ from the store's record"):
        FrameDataset(path, "train")
    part.write_bytes(bytes(data[:5]))  # truncated: no longer decodes
    with pytest.raises(DamagedError, match=rf"train/{array}: chunk train/{array}/0 cannot"):
        FrameDataset(path, "train")


def test_verify_of_an_intact_store_checks_every_sample(tmp_path: Path, events_h5: Path) -> None:
    path = built(tmp_path, events_h5)
    info = summarize(path, verify=True)
    assert info["complete"] and info["verified"] == 24 and "damage" not in info


def test_a_store_of_layout_version_1_is_rebuilt(tmp_path: Path, events_h5: Path) -> None:
    path = built(tmp_path, events_h5)
    zarr.open_group(path, mode="r+").attrs["layout_version"] = 1
    with pytest.raises(ValueError, match="layout_version 1, this dvsgkit reads 2"):
        open_frame_store(path)
    assert build_frame_store(tmp_path, FrameSpec(T), workers=1, progress=False).outcome == "built"
    open_frame_store(path)


def test_an_edited_T_is_damage_and_its_fix_is_the_command_that_rebuilds_it(
    tmp_path: Path, events_h5: Path
) -> None:
    path = built(tmp_path, events_h5)
    zarr.open_group(path, mode="r+").attrs["T"] = 8  # the frames still hold T=4
    fix = f"rebuild it with 'dvsgkit frames --root {tmp_path} -T {T} --split-by number'"
    with pytest.raises(DamagedError) as err:
        open_frame_store(path)
    assert fix in str(err.value) and "uint8 [12, 4, 2, 128, 128]" in str(err.value)
    info = summarize(path)
    assert not info["complete"] and info["fix"].startswith(fix)
    build = build_frame_store(
        tmp_path, FrameSpec(T), workers=1, progress=False
    )  # what the fix runs
    assert build.outcome == "rebuilt" and "T=8" in build.why, build
    assert open_frame_store(path).attrs["T"] == T


def test_a_rebuild_says_what_was_wrong_before_it_starts(
    tmp_path: Path, events_h5: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    path = built(tmp_path, events_h5)
    gone = chunk(path, "test", 3)
    gone.unlink()
    capsys.readouterr()
    said: list[str] = []

    def free_bytes(folder: Path) -> int:  # called once the rebuild's first block is written
        said.append(capsys.readouterr().err)
        return 1 << 40

    monkeypatch.setattr(fs, "free_bytes", free_bytes)
    # What train and evaluate call: it prints the line itself.
    assert build_frame_store(tmp_path, FrameSpec(T), workers=1, progress=False) == path
    key = gone.relative_to(path).as_posix()
    assert said == [f"{path} is damaged: test sample 3: chunk file {key} missing; rebuilding it\n"]
    assert capsys.readouterr().err == ""
    open_frame_store(path, "test")


def test_an_explicit_zarr_format_rebuilds_a_store_of_the_other_format(
    tmp_path: Path, events_h5: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = built(tmp_path, events_h5, zarr_format=2)
    capsys.readouterr()
    build = build_frame_store(tmp_path, FrameSpec(T), workers=1, progress=False, zarr_format=3)
    assert build.outcome == "rebuilt" and (path / "zarr.json").is_file()
    assert not (path / ".zgroup").exists()
    assert capsys.readouterr().err == (
        f"{path} is in Zarr format 2, not the format 3 asked for; rebuilding it\n"
    )
    # No format given: the store is kept in whichever format it has.
    assert (
        build_frame_store(tmp_path, FrameSpec(T), workers=1, progress=False).outcome == "up to date"
    )
    assert build_frame_store(tmp_path, FrameSpec(T), workers=1, progress=False,
                            zarr_format=3).outcome == "up to date"  # fmt: skip
    assert summarize(path, verify=True)["complete"]
