"""`dvsgkit frames` against the machine: a full disk and a read-only file system (real tmpfs
mounts where this process may mount), a T too large for memory, two builds at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dvsgkit import fs as storage
from dvsgkit.eventcache.build import build_event_cache
from dvsgkit.frames import FrameSpec
from dvsgkit.framestore.build import build_frame_store
from dvsgkit.synth import write_synthetic_dataset


@pytest.fixture(scope="module")
def events_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resources")
    write_synthetic_dataset(root, seed=6, train_trials=2, test_trials=1, events_per_sample=3000)
    return build_event_cache(root, workers=1, progress=False)


def test_too_little_space_is_refused_after_the_first_samples(
    small_fs: Path, events_h5: Path, run_cli, fill_disk
) -> None:
    (small_fs / "events.h5").symlink_to(events_h5)
    fill_disk(small_fs, 200_000)  # room for the first block of samples, not for all of them
    code, out = run_cli("frames", "--root", str(small_fs), "-T", "16", "--workers", "1",
                        "--no-progress")  # fmt: skip
    assert code == 1 and "Traceback" not in out
    assert f"not enough free space for {small_fs / 'frames_number_16_split_by_number.zarr'}: " \
           "it needs about" in out  # fmt: skip
    assert "free some space or use another --root" in out
    assert sorted(p.name for p in small_fs.iterdir()) == ["events.h5", "filler"]


def test_a_disk_that_fills_during_the_build_gives_one_line_and_leaves_nothing(
    small_fs: Path, events_h5: Path, monkeypatch: pytest.MonkeyPatch, run_cli, fill_disk
) -> None:
    (small_fs / "events.h5").symlink_to(events_h5)

    def fill_after_the_space_check(folder: Path) -> int:  # after the first block
        fill_disk(small_fs)  # another writer takes the rest of the disk
        return 1 << 40  # what the check saw just before

    monkeypatch.setattr(storage, "free_bytes", fill_after_the_space_check)
    code, out = run_cli("frames", "--root", str(small_fs), "-T", "16", "--workers", "1",
                        "--no-progress")  # fmt: skip
    assert code == 1 and "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    assert out.startswith(f"Error: cannot write the frame store {small_fs}/frames_number_16")
    assert "no space left on device" in out and "free some space, or use another --root" in out
    assert not list(small_fs.glob("*.zarr")) and not list(small_fs.glob("*.partial"))


def test_a_read_only_root_gives_one_line_and_a_current_store_stays_usable(
    tiny_root: Path, copy_root, tmp_path: Path, tmpfs, run_cli
) -> None:
    root = copy_root(tiny_root, tmp_path / "ro", with_=("events",))
    code, out = run_cli("frames", "--root", str(root), "-T", "2", "--workers", "1", "--no-progress")
    assert code == 0, out
    tmpfs("1m")  # skips where mounting is not allowed
    subprocess.run(["mount", "--bind", str(root), str(root)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(root)], check=True)
        code, out = run_cli("frames", "--root", str(root), "-T", "4", "--workers", "1",
                            "--no-progress")  # fmt: skip
        assert code == 1 and "Traceback" not in out and len(out.strip().splitlines()) == 1, out
        assert f"cannot write the frame store {root}/frames_number_4_split_by_number.zarr: " \
               "read-only file system" in out and "use another --root" in out  # fmt: skip
        code, out = run_cli("frames", "--root", str(root), "-T", "2", "--no-progress")
        assert code == 0 and "is up to date" in out  # nothing to write: reading is enough
    finally:
        subprocess.run(["umount", "-l", str(root)], check=True)


def test_a_T_too_large_for_memory_is_refused_before_any_work(
    tiny_root: Path, copy_root, tmp_path: Path, run_cli
) -> None:
    copy_root(tiny_root, tmp_path, with_=("events",))
    code, out = run_cli("frames", "--root", str(tmp_path), "-T", "100000", "--workers", "2",
                        "--no-progress")  # fmt: skip
    assert code == 1 and "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    assert "Error: -T 100000 needs about 439.5 GiB of memory to build (2 workers x 8 samples x " \
           "100000 frames x 2 x 128 x 128 counts x 9 bytes)" in out  # fmt: skip
    assert "GiB is available: at most -T " in out and "fewer --workers allow a larger T" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.h5"]  # no lock, no temporary


def test_check_memory_names_the_largest_T_that_fits() -> None:
    from dvsgkit.framestore.budget import build_memory, check_memory

    per_T = build_memory(1, 2, 8)
    check_memory(100, 2, 8, available=int(per_T * 100 / 0.8) + 1)
    with pytest.raises(ValueError, match=r"-T 101 needs .* at most -T 100 fits with --workers 2"):
        check_memory(101, 2, 8, available=int(per_T * 100 / 0.8) + 1)


BUILD = (  # the real command, slowed down at its free-space check so that the two overlap
    "import sys, time; from dvsgkit import fs; "
    "fs.free_bytes = lambda folder: time.sleep(3) or 1 << 40; "
    "from dvsgkit_cli.main import cli; cli(sys.argv[1:])"
)


def test_two_builds_at_once_say_which_one_built(
    tiny_root: Path, copy_root, tmp_path: Path, run_cli
) -> None:
    copy_root(tiny_root, tmp_path, with_=("events",))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                BUILD,
                "frames",
                "--root",
                str(tmp_path),
                "-T",
                "2",
                "--workers",
                "1",
                "--no-progress",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    path = tmp_path / "frames_number_2_split_by_number.zarr"
    built, waited = sorted(outs, key=lambda o: "wrote" not in o[0])
    assert built[0].startswith(f"wrote {path}: ")
    assert waited[0].startswith(
        f"{path} is up to date, built by another process while this one waited ("
    )
    assert f"waiting for process {procs[0].pid if outs[1] is waited else procs[1].pid}, " \
           f"which is building {path}" in waited[1]  # fmt: skip
    code, out = run_cli("frames", "--root", str(tmp_path), "-T", "2", "--no-progress")
    assert code == 0 and "is up to date (" in out
    assert (
        build_frame_store(tmp_path, FrameSpec(2), workers=1, progress=False).outcome == "up to date"
    )


def test_the_space_check_measures_chunks_that_workers_are_still_renaming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zarr writes each chunk as `<key>.<uuid>.partial` and renames it: while the parent measures
    the first block, a worker's temp file can vanish between listing and stat. Neither that
    nor a half-written temp may end the build or skew the estimate."""
    from dvsgkit.errors import StorageError
    from dvsgkit.framestore import budget as resources

    chunks = tmp_path / "train" / "frames"
    chunks.mkdir(parents=True)
    (chunks / "0.0.0.0.0").write_bytes(b"x" * 5000)
    (chunks / "1.0.0.0.0.9f3a.partial").write_bytes(b"x" * 100)  # being written
    (chunks / ".zarray").write_text("{}")
    real_walk = os.walk

    def walk_then_rename(folder: Path):  # a worker finishes chunk 2 right after the listing
        for d, dirs, files in real_walk(folder):
            if Path(d) == chunks:
                files = [*files, "2.0.0.0.0.77aa.partial", "3.0.0.0.0"]  # 3 renamed away too
            yield d, dirs, files

    monkeypatch.setattr(resources.os, "walk", walk_then_rename)
    check = resources.SpaceCheck(tmp_path, total=10, target=tmp_path / "s.zarr")
    check.after_block(2)  # no FileNotFoundError
    assert check.checked and check.done == 2
    # Only the complete chunk was measured: 9 samples at its size fit, 9e9 would not.
    monkeypatch.setattr(storage, "free_bytes", lambda _: 0)
    late = resources.SpaceCheck(tmp_path, total=2_000_000, target=tmp_path / "s.zarr")
    with pytest.raises(StorageError, match=r"its first 1 samples, extrapolated"):
        late.after_block(1)
