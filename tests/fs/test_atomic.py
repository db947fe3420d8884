"""Atomic files and folders: the real name holds the old content or the whole new one, never a
part; what killed writers leave (SIGKILL, for real) carries one temporary name scheme,
`.NAME.<pid>-<hex>.partial`, and `sweep` clears it.

`sweep` removes every temporary of that scheme, whoever wrote it (a live writer, a dead one,
another host's): it is called holding the lock of what is written there, where no other writer
is at work. Before the storage core, a sweep kept the temporaries whose pid was alive."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dvsgkit import fs
from dvsgkit.errors import LockTimeout, StorageError, storage_errors
from dvsgkit.fs import (
    atomic_dir,
    atomic_file,
    make_folder,
    pid_alive,
    require_free,
    scratch_dir,
    swap_in,
    sweep,
    temp_path,
    write_bytes,
    write_text,
)
from dvsgkit.fs.lock import build_lock

if TYPE_CHECKING:
    from conftest import Writers  # the `killable` fixture


def test_success_renames_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    assert write_text(target, "new\n") == target
    assert target.read_text() == "new\n"
    write_bytes(target, b"\x00bytes")
    assert target.read_bytes() == b"\x00bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_keeps_the_old_file_and_removes_the_temp(
    tmp_path: Path, error: type[BaseException]
) -> None:
    target = tmp_path / "a.json"
    target.write_text("old\n")
    with pytest.raises(error, match="disk full"), atomic_file(target) as tmp:
        tmp.write_text("half of the ne")
        raise error("disk full")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_an_error_names_the_file_meant_not_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    with (
        pytest.raises(StorageError) as err,
        storage_errors(None, "write"),
        atomic_file(target) as tmp,
    ):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    assert str(err.value) == f"cannot write {target}: no space left on device; free some space"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# Builds the file, the folder or the scratch folder argv[2] under its temporary name and stops
# halfway.
WRITER = """
import sys, time
from dvsgkit.fs import atomic_dir, atomic_file, scratch_dir
if sys.argv[1] == "file":
    with atomic_file(sys.argv[2]) as tmp, open(tmp, "wb") as f:
        f.write(b"half a file")
        f.flush()
        print("writing", flush=True)
        time.sleep(600)
with (atomic_dir if sys.argv[1] == "folder" else scratch_dir)(sys.argv[2]) as tmp:
    (tmp / "part").mkdir()
    (tmp / "part" / "chunk").write_bytes(b"half a folder")
    print("writing", flush=True)
    time.sleep(600)
"""


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_one_temp_name_scheme_says_whose_it_is(tmp_path: Path) -> None:
    target = tmp_path / "store.zarr"
    first, second = temp_path(target), temp_path(target)
    assert first != second  # one process may write the same name twice, or hold one aside
    for path in (first, second):
        assert path.parent == tmp_path
        assert re.fullmatch(rf"\.store\.zarr\.{os.getpid()}-[0-9a-f]+\.partial", path.name)


@pytest.mark.parametrize("kind", ["file", "folder", "scratch"])
def test_sweep_removes_every_temporary_of_the_name_asked_for(
    tmp_path: Path, killable: Writers, kind: str
) -> None:
    dead = killable.killed(WRITER, kind, tmp_path / "a.bin")
    live = killable.start(WRITER, kind, tmp_path / "b.bin").pid
    elsewhere = tmp_path / ".c.bin.4000000-0123abcd.partial"  # a writer on another host
    elsewhere.write_bytes(b"half")
    (tmp_path / "a.bin.keep").write_text("a result, not a temporary")
    leftovers = _hidden(tmp_path)
    assert len(leftovers) == 3 and not (tmp_path / "a.bin").exists()
    assert leftovers[0].startswith(f".a.bin.{dead}-") and leftovers[1].startswith(f".b.bin.{live}-")
    assert (tmp_path / leftovers[0]).is_dir() == (kind != "file")
    assert [p.name for p in sweep(tmp_path, "a.bin")] == [leftovers[0]]  # a's alone
    assert _hidden(tmp_path) == leftovers[1:]
    # Every other one, the live writer's too: a sweep is made holding the lock of what is
    # written there, where no writer can be at work (see the next test).
    assert [p.name for p in sweep(tmp_path)] == leftovers[1:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin.keep"]
    assert sweep(tmp_path / "missing") == []


# Writes argv[1] atomically, holding its lock, and stops halfway: the way every dvsgkit writer
# that sweeps works.
LOCKED_WRITER = """
import sys, time
from pathlib import Path
from dvsgkit.fs import atomic_file
from dvsgkit.fs.lock import build_lock, lock_of
target = Path(sys.argv[1])
with build_lock(lock_of(target)), atomic_file(target) as tmp:
    tmp.write_bytes(b"half a file")
    print("writing", flush=True)
    time.sleep(600)
"""


def test_a_sweep_under_the_lock_never_meets_a_writer_at_work(
    tmp_path: Path, killable: Writers
) -> None:
    from dvsgkit.fs.lock import lock_of

    target = tmp_path / "events.h5"
    writer = killable.start(LOCKED_WRITER, target)
    (partial,) = tmp_path.glob(f".events.h5.{writer.pid}-*.partial")
    with pytest.raises(LockTimeout), build_lock(lock_of(target), timeout=0):
        sweep(tmp_path, target.name)  # never reached while the writer holds the lock
    assert partial.read_bytes() == b"half a file"
    writer.kill()
    writer.wait()
    with build_lock(lock_of(target), timeout=0):  # its holder died: the lock is free
        assert sweep(tmp_path, target.name) == [partial]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # and the lock file went too


def test_only_names_of_this_scheme_are_swept(tmp_path: Path) -> None:
    kept = [".notes.txt.partial", ".a.bin.partial", ".a.bin.12x.partial", "a.bin.123.partial",
            ".a.bin.123.partial", ".a.bin.123-.partial", ".a.bin.-ab.partial",
            ".a.bin.123-ABC.partial", ".a.bin.lock"]  # fmt: skip
    for name in kept:
        (tmp_path / name).mkdir()
    assert sweep(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_atomic_dir_replaces_the_old_folder_whole(tmp_path: Path) -> None:
    target = tmp_path / "data"
    (target / "old").mkdir(parents=True)
    with atomic_dir(target) as tmp:
        (tmp / "new").write_text("fresh")
        assert sorted(p.name for p in target.iterdir()) == ["old"]  # untouched until the end
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # old one deleted, no temp


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_dir_failure_keeps_the_old_folder_and_removes_the_temp(
    tmp_path: Path, error: type[BaseException]
) -> None:
    target = tmp_path / "data"
    (target / "old").mkdir(parents=True)
    with pytest.raises(error), atomic_dir(target) as tmp:
        (tmp / "new" / "deeper").mkdir(parents=True)
        raise error("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_scratch_dir_is_gone_after_the_block(tmp_path: Path) -> None:
    with scratch_dir(tmp_path / "store.zarr") as tmp:
        (tmp / "chunk").write_bytes(b"x")
        assert tmp.parent == tmp_path and tmp.name.startswith(".store.zarr.")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("old", ["file", "symlink", "dangling symlink"])
def test_swap_in_replaces_a_file_or_link_too(tmp_path: Path, old: str) -> None:
    target, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("not ours to delete")
    if old == "file":
        target.write_text("old")
    else:
        target.symlink_to(elsewhere if old == "symlink" else tmp_path / "gone")
    tmp = temp_path(target)
    tmp.mkdir()
    (tmp / "new").write_text("fresh")
    swap_in(tmp, target)
    assert target.is_dir() and not target.is_symlink()
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert (elsewhere / "keep").read_text() == "not ours to delete"  # not followed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "elsewhere"]


def test_swap_in_puts_the_old_target_back_when_the_new_one_cannot_go_in(tmp_path: Path) -> None:
    target = tmp_path / "store"
    target.mkdir()
    (target / "data").write_text("old")
    missing = tmp_path / ".store.1-ab.partial"  # a rename that fails: nothing to rename
    with pytest.raises(FileNotFoundError):
        swap_in(missing, target)
    assert (target / "data").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # nothing left aside


def test_make_folder_names_a_file_in_the_way(tmp_path: Path) -> None:
    assert make_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    (tmp_path / "file").write_text("x")
    for folder in (tmp_path / "file", tmp_path / "file" / "below"):
        with pytest.raises(StorageError) as err:
            make_folder(folder, "choose another --out-dir")
        assert err.value.errno == errno.ENOTDIR
        assert str(err.value) == (f"cannot create the folder {folder}: part of the path is a "
                                  "file, not a folder; choose another --out-dir")  # fmt: skip


def test_require_free_goes_through_free_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_free(tmp_path, 1, tmp_path / "x")  # there is a byte free here
    monkeypatch.setattr(fs, "free_bytes", lambda folder: 1_000_000)  # the seam tests use
    with pytest.raises(StorageError, match="needs about 2.0 MB, .* has 1.0 MB free; clean up$"):
        require_free(tmp_path, 2_000_000, tmp_path / "x", "clean up")


def test_pid_alive_takes_any_number_a_name_can_hold() -> None:
    assert pid_alive(os.getpid()) and not pid_alive(2**80)  # beyond any pid: no such process
