"""Exact resume: on CPU, 3 epochs straight equal 2 epochs + resume to 3, bit for bit."""

from __future__ import annotations

import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch

import dvsgkit.train
from dvsgkit.config import TrainConfig
from dvsgkit.data import make_loader
from dvsgkit.run import BEST, LATEST, read_metrics
from dvsgkit.run.checkpoint import load_checkpoint
from dvsgkit.train import train

TINY = {"T": 4, "channels": 4, "batch_size": 8, "workers": 0, "device": "cpu", "progress": False}
TIMING = {"total_time", "train_samples_per_s"}


def _assert_same_tree(a: object, b: object, where: str = "") -> None:
    """Equal nested dicts/lists of tensors and plain values, tensors compared exactly."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_resume_is_bit_exact(
    frame_root: Path, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    workers = 0
    if mode == "stream":  # the streaming loader with a worker process, as on a split too big
        monkeypatch.setattr(dvsgkit.train, "make_loader", partial(make_loader, memory_budget=0))
        workers = 1
    # T_max=2: the learning rate changes every epoch, so a scheduler restored wrong would show.
    straight = TrainConfig(root=str(frame_root), out_dir=str(tmp_path / "a"), epochs=3, T_max=2,
                           **{**TINY, "workers": workers})  # fmt: skip
    train(straight)
    first = replace(straight, out_dir=str(tmp_path / "b"), epochs=2)
    train(first)
    run_b = first.run_dir()
    # --out-dir may differ when resuming: the run continues in the checkpoint's directory.
    result = train(replace(first, epochs=3, out_dir=str(tmp_path / "c")), resume=run_b / LATEST)
    assert result.run_dir == run_b and result.epochs_run == 1
    assert not (tmp_path / "c").exists()

    a, b = load_checkpoint(straight.run_dir() / LATEST), load_checkpoint(run_b / LATEST)
    assert a["epoch"] == b["epoch"] == 2
    for key in ("net", "optimizer", "lr_scheduler", "rng", "max_test_acc", "scaler"):
        _assert_same_tree(a[key], b[key], key)
    # config differs only in out_dir (the resumed command's), which is no recipe field
    assert a["config"]["epochs"] == b["config"]["epochs"] == 3
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_b)]
    assert strip == [
        {k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(straight.run_dir())
    ]
    _assert_same_tree(
        load_checkpoint(straight.run_dir() / BEST)["net"], load_checkpoint(run_b / BEST)["net"]
    )


@pytest.fixture(scope="module")
def one_epoch(frame_root: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    config = TrainConfig(root=str(frame_root), out_dir=str(tmp_path_factory.mktemp("runs")),
                         epochs=1, **TINY)  # fmt: skip
    train(config)
    return config


def test_resume_from_a_corrupt_checkpoint_fails_and_changes_nothing(
    one_epoch: TrainConfig, tmp_path: Path
) -> None:
    run_dir = tmp_path / "copy"
    shutil.copytree(one_epoch.run_dir(), run_dir)
    latest = run_dir / LATEST
    latest.write_bytes(latest.read_bytes()[:1000])  # a copy cut short
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        train(replace(one_epoch, epochs=2), resume=latest)
    with pytest.raises(FileNotFoundError, match="nothing.pth not found"):
        train(replace(one_epoch, epochs=2), resume=run_dir / "nothing.pth")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_resume_with_other_channels_or_T_is_refused(one_epoch: TrainConfig) -> None:
    latest = one_epoch.run_dir() / LATEST
    with pytest.raises(ValueError, match=r"channels=4 \(now 8\)"):
        train(replace(one_epoch, epochs=2, channels=8), resume=latest)
    with pytest.raises(ValueError, match=r"T=4 \(now 6\)"):
        train(replace(one_epoch, epochs=2, T=6), resume=latest)
    assert [r["epoch"] for r in read_metrics(one_epoch.run_dir())] == [0]


def test_starting_over_a_finished_run_is_refused(one_epoch: TrainConfig) -> None:
    before = (one_epoch.run_dir() / LATEST).read_bytes()
    with pytest.raises(FileExistsError, match=r"already holds a run \(finished: epochs 0..0 of 1"):
        train(one_epoch)
    assert (one_epoch.run_dir() / LATEST).read_bytes() == before


def test_a_metrics_line_cut_short_by_a_crash_does_not_block_the_resume(
    one_epoch: TrainConfig, tmp_path: Path
) -> None:
    run_dir = tmp_path / "copy"
    shutil.copytree(one_epoch.run_dir(), run_dir)
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"epoch": 1, "train_lo')  # the append of the next epoch's line, interrupted
    assert [r["epoch"] for r in read_metrics(run_dir)] == [0]
    train(replace(one_epoch, epochs=2), resume=run_dir / LATEST)
    assert [r["epoch"] for r in read_metrics(run_dir)] == [0, 1]
    assert (run_dir / "metrics.jsonl").read_text().endswith("}\n")


def test_an_epoch_whose_metrics_line_fails_gets_no_checkpoint(
    frame_root: Path, tmp_path: Path
) -> None:
    config = TrainConfig(root=str(frame_root), out_dir=str(tmp_path), epochs=2, **TINY)
    metrics = config.run_dir() / "metrics.jsonl"
    saved: list[bytes] = []

    def block_the_metrics_file(record: dict) -> None:  # epoch 1's line cannot be written
        saved.append(metrics.read_bytes())
        metrics.unlink()
        metrics.mkdir()

    with pytest.raises(IsADirectoryError):
        train(config, on_epoch=block_the_metrics_file)
    # Epoch 1 has no line, so no checkpoint may claim it: the resume trains it again.
    assert load_checkpoint(config.run_dir() / LATEST)["epoch"] == 0
    metrics.rmdir()
    metrics.write_bytes(saved[0])
    train(config, resume=config.run_dir() / LATEST)
    assert [r["epoch"] for r in read_metrics(config.run_dir())] == [0, 1]
