"""Atomic files and folders: the real name holds the old content or the whole new one, never a
part; leftovers of killed writers (SIGKILL, for real) are swept, those of live ones never."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dvsgkit.io.atomic import (
    atomic_dir,
    atomic_path,
    make_temp_dir,
    remove_dead_temps,
    swap_in,
    temp_dir_name,
    temp_name,
    write_text_atomic,
)

if TYPE_CHECKING:
    from conftest import Writers  # the `killable` fixture


def test_success_renames_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_failure_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half of the ne")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


# Builds the file or the folder argv[2] under its temporary name and stops halfway.
WRITER = """
import sys, time
from dvsgkit.io.atomic import atomic_dir, atomic_path
if sys.argv[1] == "file":
    with atomic_path(sys.argv[2]) as tmp, open(tmp, "wb") as f:
        f.write(b"half a file")
        f.flush()
        print("writing", flush=True)
        time.sleep(600)
with atomic_dir(sys.argv[2]) as tmp:
    (tmp / "part").mkdir()
    (tmp / "part" / "chunk").write_bytes(b"half a folder")
    print("writing", flush=True)
    time.sleep(600)
"""


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_temp_names_say_whose_they_are(tmp_path: Path) -> None:
    target = tmp_path / "store.zarr"
    assert temp_name(target).name == f".store.zarr.{os.getpid()}.partial"
    first, second = temp_dir_name(target), temp_dir_name(target)
    assert first != second  # one process may build the same folder twice
    for name in (first.name, second.name):
        assert re.fullmatch(rf"\.store\.zarr\.{os.getpid()}-[0-9a-f]+\.partial", name)


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_only_the_leftovers_of_killed_writers_are_removed(
    tmp_path: Path, killable: Writers, kind: str
) -> None:
    dead = killable.killed(WRITER, kind, tmp_path / "a.bin")
    live = killable.start(WRITER, kind, tmp_path / "b.bin").pid
    leftovers = _hidden(tmp_path)
    assert len(leftovers) == 2 and not (tmp_path / "a.bin").exists()
    assert leftovers[0].startswith(f".a.bin.{dead}") and leftovers[1].startswith(f".b.bin.{live}")
    assert (tmp_path / leftovers[0]).is_dir() == (kind == "folder")
    assert remove_dead_temps(tmp_path, "b.bin") == []  # only b's are asked for: a's stay too
    assert [p.name for p in remove_dead_temps(tmp_path)] == [leftovers[0]]
    assert _hidden(tmp_path) == [leftovers[1]]  # the live writer's is never deleted


def test_only_names_of_this_scheme_are_swept(tmp_path: Path) -> None:
    kept = [".notes.txt.partial", ".a.bin.partial", ".a.bin.12x.partial", "a.bin.123.partial"]
    for name in kept:
        (tmp_path / name).mkdir()
    assert remove_dead_temps(tmp_path) == []
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


@pytest.mark.parametrize("old", ["file", "symlink", "dangling symlink"])
def test_swap_in_replaces_a_file_or_link_too(tmp_path: Path, old: str) -> None:
    target, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("not ours to delete")
    if old == "file":
        target.write_text("old")
    else:
        target.symlink_to(elsewhere if old == "symlink" else tmp_path / "gone")
    tmp = make_temp_dir(target)
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


def test_pid_alive_takes_any_number_a_name_can_hold() -> None:
    from dvsgkit.io.atomic import pid_alive

    assert pid_alive(os.getpid()) and not pid_alive(2**80)  # beyond any pid: no such process
