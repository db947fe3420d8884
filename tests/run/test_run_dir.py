"""The run directory: where a run starts, what it refuses before anything is written, its lock,
and each epoch's files."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dvsgkit.config import TrainConfig
from dvsgkit.errors import LockTimeout
from dvsgkit.model import GestureNet
from dvsgkit.run import (
    BEST,
    CONFIG,
    LATEST,
    METRICS,
    RUN_LOCK,
    SCALARS,
    prepare_run,
    read_metrics,
    run_lock,
)
from dvsgkit.run.checkpoint import load_checkpoint, load_resumable, save_checkpoint

RECORD = {"epoch": 0, **dict.fromkeys(SCALARS, 0.0)}  # an epoch's metrics, as far as written
TINY = {"T": 4, "channels": 4, "batch_size": 4, "workers": 0, "device": "cpu", "progress": False}


def _fake_run(run_dir: Path, config: TrainConfig, epoch: int) -> None:
    run_dir.mkdir(parents=True)
    config.save_json(run_dir / CONFIG)
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e}) + "\n" for e in range(epoch + 1))
    )
    net = GestureNet(config.channels).state_dict()
    ckpt = {"net": net, "epoch": epoch, "max_test_acc": 0.5, "config": config.to_dict()}
    ckpt |= {"optimizer": {}, "lr_scheduler": {}, "scaler": {}}
    save_checkpoint({**ckpt, "format": "dvsgkit.checkpoint"}, run_dir / LATEST)


def test_prepare_run_refuses_to_start_over_an_existing_run(tmp_path: Path) -> None:
    config = TrainConfig(out_dir=str(tmp_path), epochs=3, **TINY)
    run = prepare_run(config)
    run_dir = run.path
    assert run_dir == config.run_dir() and not run.resumed and not run_dir.exists()
    _fake_run(run_dir, config, epoch=2)
    with pytest.raises(FileExistsError, match=r"already holds a run \(finished: epochs 0..2 of 3"):
        prepare_run(config)
    (run_dir / "metrics.jsonl").write_text('{"epoch": 0}\n')
    with pytest.raises(FileExistsError, match=r"\(unfinished: epochs 0..0 of 3 done\)"):
        prepare_run(config)
    (run_dir / LATEST).unlink()  # a crashed start: config.json only
    with pytest.raises(FileExistsError, match=r"different run \(momentum=0.9 \(now 0.5\)\)"):
        prepare_run(replace(config, momentum=0.5))
    assert prepare_run(config).path == run_dir


def test_prepare_run_checks_the_checkpoint_it_resumes(tmp_path: Path) -> None:
    config = TrainConfig(out_dir=str(tmp_path), epochs=3, **TINY)
    run_dir = config.run_dir()
    _fake_run(run_dir, config, epoch=1)
    ckpt = load_resumable(run_dir / LATEST)
    run = prepare_run(replace(config, out_dir="elsewhere"), run_dir / LATEST, ckpt)
    assert run.path == run_dir and run.resumed and ckpt["epoch"] == 1
    assert prepare_run(config, run_dir, ckpt).path == run_dir  # a run directory: its latest
    with pytest.raises(ValueError, match=r"channels=4 \(now 8\).*T=4 \(now 6\)|T=4 \(now 6\)"):
        prepare_run(replace(config, channels=8, T=6), run_dir / LATEST, ckpt)
    with pytest.raises(ValueError, match="already trained 2 epochs; pass --epochs larger than 2"):
        prepare_run(replace(config, epochs=2), run_dir / LATEST, ckpt)
    foreign = tmp_path / "sj.pth"
    torch.save({"net": {"conv.0.weight": torch.zeros(1)}, "epoch": 5, "max_test_acc": 0.9}, foreign)
    with pytest.raises(ValueError, match="not a dvsgkit training checkpoint"):
        load_resumable(foreign)


def test_run_lock_admits_one_process_per_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with run_lock(run_dir):
        assert (run_dir / RUN_LOCK).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
        busy = rf"process {os.getpid()} is training the run in"
        with pytest.raises(LockTimeout, match=busy), run_lock(run_dir):  # refused, no waiting
            pytest.fail("two holders of one run directory")
    assert not (run_dir / RUN_LOCK).exists()  # a finished run leaves no lock file
    with run_lock(run_dir):  # released on exit
        pass
    assert sorted(p.name for p in run_dir.iterdir()) == []


def test_the_first_epoch_always_writes_checkpoint_max(tmp_path: Path) -> None:
    # evaluate and the demo expect checkpoint_max.pth after any run, even one scoring 0 %
    # (nothing beats the initial 0); later epochs write it on a new best only.
    config = TrainConfig(out_dir=str(tmp_path), epochs=3, **TINY)
    run_dir = config.run_dir()
    record = RECORD
    with prepare_run(config) as run:
        run.open(config, 0, {"path": "frames"})
        run.write_epoch(record, _checkpoint_bytes(config, epoch=0), improved=False)
        assert load_checkpoint(run_dir / BEST)["epoch"] == 0
        run.write_epoch({**record, "epoch": 1}, _checkpoint_bytes(config, epoch=1), False)
        run.write_epoch({**record, "epoch": 2}, _checkpoint_bytes(config, epoch=2), True)
    assert load_checkpoint(run_dir / LATEST)["epoch"] == 2
    assert load_checkpoint(run_dir / BEST)["epoch"] == 2
    assert [r["epoch"] for r in read_metrics(run_dir)] == [0, 1, 2]
    assert not (run_dir / RUN_LOCK).exists()  # closed: the lock is let go


def test_a_disk_without_room_for_the_checkpoint_gets_nothing_of_the_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dvsgkit.fs

    config = TrainConfig(out_dir=str(tmp_path), epochs=3, **TINY)
    run_dir = config.run_dir()
    with prepare_run(config) as run:
        run.open(config, 0, {"path": "frames"})
        monkeypatch.setattr(dvsgkit.fs, "free_bytes", lambda folder: 1000)
        with pytest.raises(OSError) as err:
            run.write_epoch(RECORD, _checkpoint_bytes(config, epoch=0), improved=True)
        assert str(err.value).startswith(f"not enough free space for {run_dir / LATEST}: ")
        assert str(err.value).endswith("no epoch was saved: free some space, or choose another "
                                       "--out-dir")  # fmt: skip
        assert not (run_dir / METRICS).exists() and not list(run_dir.glob("*.pth"))
        monkeypatch.undo()
        run.write_epoch(RECORD, _checkpoint_bytes(config, epoch=0), improved=True)
        monkeypatch.setattr(dvsgkit.fs, "free_bytes", lambda folder: 1000)
        with pytest.raises(OSError, match=f"{run_dir / LATEST} is intact: free some space, then "
                           f"rerun with --resume {run_dir / LATEST}"):  # fmt: skip
            run.write_epoch(
                {**RECORD, "epoch": 1}, _checkpoint_bytes(config, epoch=1), improved=True
            )
    assert [r["epoch"] for r in read_metrics(run_dir)] == [0]


def _checkpoint_bytes(config: TrainConfig, epoch: int) -> bytes:
    from dvsgkit.run.checkpoint import checkpoint_bytes, new_checkpoint

    net = GestureNet(config.channels)
    return checkpoint_bytes(new_checkpoint({"net": net}, epoch=epoch, max_test_acc=0.0))
