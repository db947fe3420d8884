"""prepare_run: where a run starts, and what it refuses before anything is written."""

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
from dvsgkit.run import CONFIG, LATEST, RUN_LOCK
from dvsgkit.run.checkpoint import save_atomic
from dvsgkit.run.prepare import prepare_run, run_lock

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
    save_atomic({**ckpt, "format": "dvsgkit.checkpoint"}, run_dir / LATEST)


def test_prepare_run_refuses_to_start_over_an_existing_run(tmp_path: Path) -> None:
    config = TrainConfig(out_dir=str(tmp_path), epochs=3, **TINY)
    run_dir, ckpt = prepare_run(config, None)
    assert (run_dir, ckpt) == (config.run_dir(), None) and not run_dir.exists()
    _fake_run(run_dir, config, epoch=2)
    with pytest.raises(FileExistsError, match=r"already holds a run \(finished: epochs 0..2 of 3"):
        prepare_run(config, None)
    (run_dir / "metrics.jsonl").write_text('{"epoch": 0}\n')
    with pytest.raises(FileExistsError, match=r"\(unfinished: epochs 0..0 of 3 done\)"):
        prepare_run(config, None)
    (run_dir / LATEST).unlink()  # a crashed start: config.json only
    with pytest.raises(FileExistsError, match=r"different run \(momentum=0.9 \(now 0.5\)\)"):
        prepare_run(replace(config, momentum=0.5), None)
    assert prepare_run(config, None) == (run_dir, None)


def test_prepare_run_checks_the_checkpoint_it_resumes(tmp_path: Path) -> None:
    config = TrainConfig(out_dir=str(tmp_path), epochs=3, **TINY)
    run_dir = config.run_dir()
    _fake_run(run_dir, config, epoch=1)
    got_dir, ckpt = prepare_run(replace(config, out_dir="elsewhere"), run_dir / LATEST)
    assert got_dir == run_dir and ckpt["epoch"] == 1
    assert prepare_run(config, run_dir)[0] == run_dir  # a run directory means its latest
    with pytest.raises(ValueError, match=r"channels=4 \(now 8\).*T=4 \(now 6\)|T=4 \(now 6\)"):
        prepare_run(replace(config, channels=8, T=6), run_dir / LATEST)
    with pytest.raises(ValueError, match="already trained 2 epochs; pass --epochs larger than 2"):
        prepare_run(replace(config, epochs=2), run_dir / LATEST)
    foreign = tmp_path / "sj.pth"
    torch.save({"net": {"conv.0.weight": torch.zeros(1)}, "epoch": 5, "max_test_acc": 0.9}, foreign)
    with pytest.raises(ValueError, match="not a dvsgkit training checkpoint"):
        prepare_run(config, foreign)


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
