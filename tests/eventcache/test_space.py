"""`dvsgkit events` on a full disk and on a read-only mount: one line, exit 1, nothing left.

The real faults: a small tmpfs mounted for the test (root only; skipped with the reason
elsewhere), and the same tmpfs remounted read-only. The build runs as a subprocess, since the
failure these guard against is the process crashing (HDF5 segfaults on a full disk)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from dvsgkit import fs
from dvsgkit.errors import StorageError
from dvsgkit.eventcache import build as store
from dvsgkit.synth import write_synthetic_dataset
from dvsgkit_cli.main import cli

# The dataset: 3 recordings, ~6 MB of .aedat (~0.75 M events); its cache needs ~4.5 MB, and the
# build asks for WRITE_MARGIN (16 MiB) on top.
DATASET_MB = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    write_synthetic_dataset(root, seed=4, train_trials=2, test_trials=1, events_per_sample=20000)
    return root


@pytest.fixture
def mount(tmpfs: Callable[[str], Path]) -> Callable[[int, Path], Path]:
    """mount(size_mb, dataset) -> a fresh tmpfs of that size holding a copy of the dataset."""

    def make(size_mb: int, source: Path) -> Path:
        point = tmpfs(f"{size_mb}m")
        shutil.copytree(source / "extract", point / "extract")
        return point

    return make


def events_cli(root: Path, *patch: str) -> subprocess.CompletedProcess:
    """`dvsgkit events --root ROOT` in a fresh process, after `patch` statements run there."""
    code = "\n".join(["from dvsgkit.eventcache import build as store", *patch,
                      "from dvsgkit_cli.main import cli",
                      f"cli(['events', '--root', {str(root)!r}, '--no-progress'])"])  # fmt: skip
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def assert_one_line_error(done: subprocess.CompletedProcess, *expected: str) -> None:
    out = (done.stdout + done.stderr).strip()
    assert done.returncode == 1, out[-2000:]
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out[-2000:]
    for text in expected:
        assert text in lines[0], lines[0]


def cache_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(("events", ".events")))


# The build lock's file (.events.h5.lock) is removed when its holder lets go.


def test_a_disk_too_small_is_refused_before_the_build(dataset: Path, mount: object) -> None:
    root = mount(DATASET_MB + 10, dataset)  # type: ignore[operator]
    done = events_cli(root)
    assert_one_line_error(done, f"not enough free space for {root / 'events.h5'}: it needs about",
                          "free some space, or use another --root")  # fmt: skip
    assert cache_files(root) == []


def test_a_disk_filling_up_during_the_build_stops_it_cleanly(dataset: Path, mount: object) -> None:
    # With the estimate made useless the build starts, and meets the full disk while writing:
    # each write is checked against its worst case first, so HDF5 never sees ENOSPC (without
    # that check this run ends in a segmentation fault inside HDF5, exit 139).
    root = mount(DATASET_MB + 4, dataset)  # ~4 MB free, the cache needs ~5
    done = events_cli(root, "store.ESTIMATE_BYTES_PER_EVENT = 0.0", "store.WRITE_MARGIN = 1 << 20")
    assert_one_line_error(done, "not enough free space for", f"{root}/events.h5: it needs")
    assert cache_files(root) == []


def test_enough_space_builds(dataset: Path, mount: object) -> None:
    root = mount(DATASET_MB + 40, dataset)  # type: ignore[operator]
    done = events_cli(root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert cache_files(root) == ["events.h5"]


def test_a_read_only_mount(dataset: Path, mount: object) -> None:
    root = mount(DATASET_MB + 40, dataset)  # type: ignore[operator]
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    done = events_cli(root)
    assert_one_line_error(done, f"cannot create {root}/events.h5: read-only file system")
    # A complete cache on a read-only mount is used as it is; a stale one is refused cleanly.
    subprocess.run(["mount", "-o", "remount,rw", str(root)], check=True)
    assert events_cli(root).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    done = events_cli(root)
    assert done.returncode == 0 and "is up to date" in done.stdout, done.stderr
    subprocess.run(["mount", "-o", "remount,rw", str(root)], check=True)
    trials = root / "extract" / "DvsGesture" / "trials_to_test.txt"
    trials.write_text(trials.read_text() + "\n")  # a changed source: the cache is stale
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    assert_one_line_error(events_cli(root), "read-only file system")
    assert cache_files(root) == ["events.h5"]  # left as it was: it cannot be removed


def test_free_space_estimate_and_message(
    tiny_root: Path, copy_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same refusal wherever a tmpfs cannot be mounted: the estimate follows the .aedat
    sizes (8 bytes per event) and the message names the path, the need and the fix."""
    copy_root(tiny_root, tmp_path, with_=("recordings",))
    aedat = sum(p.stat().st_size for p in (tmp_path / "extract").rglob("*.aedat"))
    need = int(aedat / 8 * store.ESTIMATE_BYTES_PER_EVENT) + store.WRITE_MARGIN
    monkeypatch.setattr(fs, "free_bytes", lambda folder: need - 1)
    with pytest.raises(StorageError, match=r"events.h5: it needs about .* MB, .* has"):
        store.build_event_cache(tmp_path, workers=1, progress=False)
    assert cache_files(tmp_path) == []
    monkeypatch.setattr(fs, "free_bytes", lambda folder: need + store.WRITE_MARGIN * 4)
    assert store.build_event_cache(tmp_path, workers=1, progress=False).is_file()


def test_frames_reports_an_event_cache_it_cannot_write_in_one_line(
    tiny_root: Path, copy_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `dvsgkit frames` (and train, demo) build the event cache first when recordings are there.
    copy_root(tiny_root, tmp_path, with_=("recordings",))
    monkeypatch.setattr(fs, "free_bytes", lambda folder: 0)
    result = CliRunner().invoke(cli, ["frames", "--root", str(tmp_path), "-T", "2",
                                      "--workers", "1", "--no-progress"])  # fmt: skip
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(f"Error: not enough free space for {tmp_path / 'events.h5'}")
