"""Faults of the run directory, made for real: a writer killed with SIGKILL mid-checkpoint, a full
disk and a read-only one (small tmpfs mounts; those tests need root and are skipped without)."""

from __future__ import annotations

import errno
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

import dvsgkit.run as run
from dvsgkit.config import TrainConfig
from dvsgkit.fs import sweep
from dvsgkit.run import LATEST, read_metrics
from dvsgkit.run.checkpoint import load_checkpoint
from dvsgkit.train import train
from dvsgkit_cli.main import cli

if TYPE_CHECKING:
    from conftest import Writers  # the `killable` fixture

TINY = {"T": 4, "channels": 4, "batch_size": 8, "workers": 0, "device": "cpu", "progress": False}
TRAIN = ["train", "-T", "4", "--channels", "4", "-b", "8", "-j", "0", "--device", "cpu"]
RUN = "T_4_b_8_c_4_adam_lr_0.001_cosalr_32"

# Writes `target` through atomic_file and stops halfway, as a checkpoint write that is killed.
WRITER = """
import sys, time
from dvsgkit.fs import atomic_file
with atomic_file(sys.argv[1]) as tmp, open(tmp, "wb") as f:
    f.write(b"half a checkpoint")
    f.flush()
    print("writing", flush=True)
    time.sleep(600)
"""


def _partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.partial"))


def test_the_sweep_removes_every_temporary_and_nothing_else(
    tmp_path: Path, killable: Writers
) -> None:
    dead = killable.killed(WRITER, tmp_path / "checkpoint_latest.pth")
    (leftover,) = tmp_path.glob(f".checkpoint_latest.pth.{dead}-*.partial")
    (tmp_path / ".notes.txt.partial").write_text("not a dvsgkit temporary: kept")
    assert sweep(tmp_path) == [leftover]
    assert _partials(tmp_path) == [".notes.txt.partial"]
    assert not (tmp_path / "checkpoint_latest.pth").exists()


def test_resume_removes_a_killed_checkpoint_write(
    frame_root: Path, tmp_path: Path, killable: Writers
) -> None:
    config = TrainConfig(root=str(frame_root), out_dir=str(tmp_path), epochs=1, **TINY)
    run_dir = train(config).run_dir
    killable.killed(WRITER, run_dir / LATEST)
    # `dvsgkit evaluate` writing its report into the run directory meanwhile, without the lock.
    evaluating = killable.start(WRITER, run_dir / "checkpoint_latest_test_eval.json")
    assert len(_partials(run_dir)) == 2
    train(TrainConfig(**{**config.to_dict(), "epochs": 2}), resume=run_dir)
    (kept,) = _partials(run_dir)  # the killed checkpoint write is gone, the report stays
    assert kept.startswith(f".checkpoint_latest_test_eval.json.{evaluating.pid}-")
    assert load_checkpoint(run_dir / LATEST)["epoch"] == 1


# ----------------------------------------------------------------------------- tmpfs


# Holds the training lock of the run directory argv[1], as a `dvsgkit train` running there does.
HOLDER = """
import sys, time
from pathlib import Path
from dvsgkit.run import RUN_LOCK
from dvsgkit.fs.lock import build_lock
with build_lock(Path(sys.argv[1]) / RUN_LOCK, timeout=0):
    print("writing", flush=True)
    time.sleep(600)
"""


def test_a_run_directory_another_process_trains_in_is_refused(
    frame_root: Path, tmp_path: Path, killable: Writers, error_line
) -> None:
    run_dir = tmp_path / "runs" / RUN
    run_dir.mkdir(parents=True)
    holder = killable.start(HOLDER, run_dir)
    line = error_line(_train(frame_root, tmp_path / "runs", "--epochs", "1"))
    assert f"process {holder.pid} is training the run in {run_dir}" in line, line
    assert f"kill {holder.pid}" in line
    assert sorted(p.name for p in run_dir.iterdir()) == ["train.lock"]  # nothing else written
    holder.kill()  # SIGKILL: the lock goes with its holder
    holder.wait()
    result = _train(frame_root, tmp_path / "runs", "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in read_metrics(run_dir)] == [0]


def _train(root: Path, out: Path, *extra: str) -> object:
    args = [*TRAIN, "--root", str(root), "--out-dir", str(out), "--no-progress", *extra]
    return CliRunner().invoke(cli, args)


def test_a_full_disk_before_the_first_epoch(
    frame_root: Path, small_fs: Path, fill_disk, error_line
) -> None:
    fill_disk(small_fs)
    line = error_line(_train(frame_root, small_fs / "runs", "--epochs", "1"))
    run_dir = small_fs / "runs" / RUN
    # the first file a run writes is its lock
    assert f"cannot write {run_dir / 'train.lock'}: no space left on device" in line, line
    assert "no epoch was saved: free some space, or choose another --out-dir" in line
    assert _partials(small_fs) == [] and not list(small_fs.rglob("*.pth"))


def test_a_disk_that_fills_during_training(frame_root: Path, small_fs: Path, fill_disk) -> None:
    filler: list[Path] = []
    config = TrainConfig(root=str(frame_root), out_dir=str(small_fs / "runs"), epochs=3, **TINY)
    with pytest.raises(OSError) as err:  # the disk fills once epoch 0 is written
        train(config, on_epoch=lambda record: filler or filler.append(fill_disk(small_fs)))
    run_dir = small_fs / "runs" / RUN
    line = str(err.value)
    assert line.startswith(f"not enough free space for {run_dir / LATEST}: "), line
    assert line.endswith(f"{run_dir / LATEST} is intact: free some space, then rerun with "
                         f"--resume {run_dir / LATEST}"), line  # fmt: skip
    assert load_checkpoint(run_dir / LATEST)["epoch"] == 0
    assert _partials(small_fs) == []
    assert (run_dir / "metrics.jsonl").read_bytes().endswith(b"}\n")  # no torn line

    filler[0].unlink()  # space again: the run continues where it stopped
    result = _train(frame_root, small_fs / "runs", "--epochs", "2", "--resume", str(run_dir))
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in read_metrics(run_dir)] == [0, 1]


def test_a_full_disk_during_training_stops_in_one_line_naming_the_checkpoint(
    frame_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As above without a real file system to fill: dvsgkit.fs.free_bytes says the disk is full.
    import dvsgkit.fs

    def full(record: dict) -> None:
        monkeypatch.setattr(dvsgkit.fs, "free_bytes", lambda folder: 0)

    config = TrainConfig(root=str(frame_root), out_dir=str(tmp_path), epochs=3, **TINY)
    run_dir = config.run_dir()
    with pytest.raises(OSError, match=f"{run_dir / LATEST} is intact: free some space, then rerun "
                       f"with --resume {run_dir / LATEST}$"):  # fmt: skip
        train(config, on_epoch=full)
    assert [r["epoch"] for r in read_metrics(run_dir)] == [0]
    assert load_checkpoint(run_dir / LATEST)["epoch"] == 0 and _partials(run_dir) == []
    monkeypatch.undo()
    train(replace(config, epochs=2), resume=run_dir)
    assert [r["epoch"] for r in read_metrics(run_dir)] == [0, 1]


def test_a_read_only_run_directory(frame_root: Path, small_fs: Path, error_line) -> None:
    assert _train(frame_root, small_fs / "runs", "--epochs", "1").exit_code == 0
    run_dir = small_fs / "runs" / RUN
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    line = error_line(_train(frame_root, small_fs / "runs", "--epochs", "2",
                              "--resume", str(run_dir)))  # fmt: skip
    assert f"cannot write {run_dir / 'train.lock'}: read-only file system" in line, line
    assert "then rerun with --resume" in line and "make it writable" in line
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before

    line = error_line(_train(frame_root, small_fs / "other", "--epochs", "1"))
    assert f"cannot write {small_fs / 'other'}: read-only file system" in line, line


def test_evaluate_and_plot_into_a_read_only_folder(
    frame_root: Path, tmp_path: Path, small_fs: Path, error_line
) -> None:
    config = TrainConfig(root=str(frame_root), out_dir=str(tmp_path / "runs"), epochs=1, **TINY)
    run_dir = train(config).run_dir
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    out = small_fs / "eval"
    args = ["evaluate", str(run_dir), "--root", str(frame_root), "--device", "cpu"]
    line = error_line(CliRunner().invoke(cli, [*args, "--out-dir", str(out)]))
    assert line == (f"Error: cannot create the folder {out}: read-only file system; give another "
                    "--out-dir, or free some space")  # fmt: skip
    png = small_fs / "curves.png"
    line = error_line(CliRunner().invoke(cli, ["plot", str(run_dir), "-o", str(png)]))
    assert "Read-only file system" in line and str(png) in line, line


def test_a_read_only_dataset_root(
    frame_root: Path, small_fs: Path, tmp_path: Path, error_line
) -> None:
    root = small_fs / "data"
    root.mkdir()
    (root / "events.h5").write_bytes((frame_root / "events.h5").read_bytes())
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    line = error_line(_train(root, tmp_path / "runs", "--epochs", "1"))  # frames cannot be built
    assert "read-only file system" in line.lower() and str(root) in line, line
    assert not (tmp_path / "runs").exists()


def test_a_metrics_line_cut_by_a_full_disk_is_removed(small_fs: Path, fill_disk) -> None:
    from dvsgkit.run import append_line

    metrics = small_fs / "metrics.jsonl"
    metrics.write_text('{"epoch": 0}\n')  # its page has room for ~4 KB more
    fill_disk(small_fs)
    with pytest.raises(OSError) as err:
        append_line(metrics, '{"epoch": 1, "pad": "' + "x" * 20000 + '"}\n')
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(metrics)
    assert metrics.read_text() == '{"epoch": 0}\n'


def test_a_run_made_while_this_one_was_prepared_is_refused(
    frame_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two `train`s of one recipe start together: both pass prepare_run; the first trains and
    # finishes before the second takes the run directory's lock. The second must then refuse
    # (the run exists), not train over it.
    config = TrainConfig(root=str(frame_root), out_dir=str(tmp_path / "runs"), epochs=1, **TINY)
    lock = run.run_lock

    def the_other_run_finishes_first(run_dir: Path):  # noqa: ANN202
        monkeypatch.setattr(run, "run_lock", lock)
        train(config)
        return lock(run_dir)

    monkeypatch.setattr(run, "run_lock", the_other_run_finishes_first)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(config)
    assert [r["epoch"] for r in read_metrics(config.run_dir())] == [0]  # the first run's epoch


def test_a_run_resumed_twice_at_once_trains_once(
    frame_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two resumes of one run start together from epoch 0; the first trains epoch 1 and finishes
    # before the second takes the lock. The second must refuse, not train epoch 1 again over it.
    config = TrainConfig(root=str(frame_root), out_dir=str(tmp_path / "runs"), epochs=1, **TINY)
    run_dir = train(config).run_dir
    lock = run.run_lock

    def the_other_resume_finishes_first(where: Path):  # noqa: ANN202
        monkeypatch.setattr(run, "run_lock", lock)
        train(replace(config, epochs=2), resume=run_dir)
        return lock(where)

    monkeypatch.setattr(run, "run_lock", the_other_resume_finishes_first)
    with pytest.raises(ValueError, match="another process trained in .* while this run was start"):
        train(replace(config, epochs=3), resume=run_dir)
    assert [r["epoch"] for r in read_metrics(run_dir)] == [0, 1]
    assert load_checkpoint(run_dir / LATEST)["epoch"] == 1
