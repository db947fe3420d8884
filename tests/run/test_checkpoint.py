"""Checkpoint files: atomic saves, weights-only loads that refuse damaged or unsafe files, and
RNG states that survive the round trip."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from dvsgkit.run import LATEST
from dvsgkit.run.checkpoint import load_checkpoint, save_atomic
from dvsgkit.run.rng import rng_state, set_rng_state


def test_save_atomic_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.pth"
    save_atomic({"net": {"w": torch.ones(3)}, "epoch": 0}, path)
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises for an unpicklable value
        save_atomic({"net": {}, "epoch": 1, "bad": lambda: 0}, path)
    assert load_checkpoint(path)["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth"]


class _NotWeights:
    pass


def test_load_checkpoint_refuses_missing_truncated_and_unsafe_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth not found"):
        load_checkpoint(tmp_path / "nope.pth")
    good = tmp_path / "good.pth"
    save_atomic({"net": {"w": torch.arange(1000.0)}, "epoch": 3}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match="cut.pth is not a readable checkpoint"):
        load_checkpoint(cut)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"net": {}, "x": _NotWeights()}, unsafe)  # loading it would need a full unpickle
    with pytest.raises(ValueError, match="unsafe.pth is not a readable checkpoint"):
        load_checkpoint(unsafe)
    no_net = tmp_path / "no_net.pth"
    torch.save({"model": {}}, no_net)
    with pytest.raises(ValueError, match="holds no 'net'"):
        load_checkpoint(no_net)
    save_atomic({"net": {}, "epoch": 7}, tmp_path / LATEST)
    assert load_checkpoint(tmp_path)["epoch"] == 7  # a run directory means its latest checkpoint


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.rand(5), np.random.rand(7), random.random()
    save_atomic({"net": {}, "rng": [rng_state()]}, tmp_path / "c.pth")
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    torch.rand(10), np.random.rand(10), random.random()
    set_rng_state(load_checkpoint(tmp_path / "c.pth")["rng"][0])
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]
