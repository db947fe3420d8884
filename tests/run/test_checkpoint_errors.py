"""A damaged or edited dvsgkit checkpoint given to `train --resume` or `evaluate`: one line naming
the file and what is wrong, exit 1, the run directory untouched."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dvsgkit.config import TrainConfig
from dvsgkit.run import LATEST
from dvsgkit.run.checkpoint import save_checkpoint
from dvsgkit.train import train
from dvsgkit_cli.main import cli

TINY = {"T": 4, "channels": 4, "batch_size": 8, "workers": 0, "device": "cpu", "progress": False}
TRAIN = ["train", "-T", "4", "--channels", "4", "-b", "8", "-j", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def run_dir(frame_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TrainConfig(root=str(frame_root), out_dir=str(tmp_path_factory.mktemp("runs")),
                         epochs=1, **TINY)  # fmt: skip
    return train(config).run_dir


def _set(key: str, value: object) -> Callable[[dict], None]:
    def edit(ckpt: dict) -> None:
        ckpt[key] = value

    return edit


def _delete(key: str) -> Callable[[dict], None]:
    return lambda ckpt: ckpt.pop(key)


def _reshape_conv(ckpt: dict) -> None:
    ckpt["net"]["convs.0.weight"] = torch.zeros(8, 2, 3, 3)


def _drop_weight(ckpt: dict) -> None:
    del ckpt["net"]["fc2.weight"]


def _reshape_adam(ckpt: dict) -> None:
    ckpt["optimizer"]["state"][0]["exp_avg"] = torch.zeros(8, 2, 3, 3)


def _bad_config_value(ckpt: dict) -> None:
    ckpt["config"]["lr"] = "fast"


def _huge_channels(ckpt: dict) -> None:
    ckpt["config"]["channels"] = 1_000_000  # built as it claims: terabytes of weights


def _nan_weight(ckpt: dict) -> None:
    ckpt["net"]["fc1.weight"][0, 0] = float("nan")  # what a diverged run wrote


TAMPERED = [
    ("missing-epoch", _delete("epoch"), "not a valid dvsgkit checkpoint: missing key 'epoch'"),
    ("epoch-str", _set("epoch", "3"), "'epoch' is a str"),
    ("config-list", _set("config", [1, 2]), "'config' is a list"),
    ("config-value", _bad_config_value, "its 'config' is invalid (lr must be a finite number"),
    ("net-list", _set("net", [1, 2]), "holds no 'net' state dict"),
    ("net-value", _set("net", {"convs.0.weight": 3}), "'net' maps 'convs.0.weight' to a int"),
    ("conv-shape", _reshape_conv,
     "weights do not fit: convs.0.weight has shape [8, 2, 3, 3], expected [4, 2, 3, 3]"),
    ("missing-weight", _drop_weight, "weights do not fit this network: missing fc2.weight"),
    ("max-acc", _set("max_test_acc", 7.0), "'max_test_acc' is 7.0, expected 0..1"),
    ("config-channels", _huge_channels, "weights do not fit: convs.0.weight has shape "
     "[4, 2, 3, 3], expected [1000000, 2, 3, 3] for its config (channels 1000000, neuron lif)"),
    ("nan-weight", _nan_weight,
     "weight fc1.weight holds non-finite values (NaN or inf): its run had diverged"),
]  # fmt: skip
RESUME_ONLY = [
    ("optimizer-missing", _delete("optimizer"), "missing key 'optimizer'"),
    ("optimizer-state", _set("optimizer", {"state": {}, "param_groups": [{"lr": 1}]}),
     "its 'optimizer' state does not fit this run (KeyError: 'params')"),
    ("optimizer-shape", _reshape_adam, "its 'optimizer' state does not fit this run: exp_avg has "
     "shape [8, 2, 3, 3] for a parameter of shape [4, 2, 3, 3]"),
    ("rng-state", _set("rng", [{"torch": torch.zeros(3)}]),
     "its 'rng' state does not fit this run"),
]  # fmt: skip


def _tampered(run_dir: Path, tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    ckpt = torch.load(copy / LATEST, weights_only=True)
    edit(ckpt)
    save_checkpoint(ckpt, copy / LATEST)
    return copy


@pytest.mark.parametrize(("name", "edit", "message"), TAMPERED + RESUME_ONLY,
                         ids=[t[0] for t in TAMPERED + RESUME_ONLY])  # fmt: skip
def test_resume_from_a_tampered_checkpoint_fails_in_one_line(
    frame_root: Path, run_dir: Path, tmp_path: Path, name: str, edit: Callable, message: str,
    error_line,
) -> None:  # fmt: skip
    copy = _tampered(run_dir, tmp_path, edit)
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    args = [*TRAIN, "--epochs", "2", "--root", str(frame_root), "--no-progress"]
    line = error_line(CliRunner().invoke(cli, [*args, "--resume", str(copy / LATEST)]))
    assert str(copy / LATEST) in line and message in line, line
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(("name", "edit", "message"), TAMPERED, ids=[t[0] for t in TAMPERED])
def test_evaluate_of_a_tampered_checkpoint_fails_in_one_line(
    frame_root: Path, run_dir: Path, tmp_path: Path, name: str, edit: Callable, message: str,
    error_line,
) -> None:  # fmt: skip
    copy = _tampered(run_dir, tmp_path, edit)
    args = ["evaluate", str(copy / LATEST), "--root", str(frame_root), "--device", "cpu"]
    line = error_line(CliRunner().invoke(cli, [*args, "--no-progress"]))
    assert str(copy / LATEST) in line and message in line, line
    assert not list(copy.glob("*_eval.*"))


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_garbage_bytes_fail_in_one_line(
    frame_root: Path, tmp_path: Path, command: str, error_line
) -> None:
    bad = tmp_path / "checkpoint_latest.pth"
    bad.write_bytes(bytes(range(256)) * 8)
    if command == "train":
        args = [*TRAIN, "--epochs", "2", "--out-dir", str(tmp_path / "runs"), "--resume", str(bad)]
    else:
        args = ["evaluate", str(bad), "--device", "cpu"]
    line = error_line(CliRunner().invoke(cli, [*args, "--root", str(frame_root)]))
    assert f"{bad} is not a readable checkpoint" in line, line
    assert not (tmp_path / "runs").exists()


def test_evaluate_of_a_state_dict_keyed_by_numbers_fails_in_one_line(
    frame_root: Path, tmp_path: Path, error_line
) -> None:
    odd = tmp_path / "odd.pth"
    torch.save({"net": {1: torch.zeros(3)}}, odd)
    args = ["evaluate", str(odd), "--root", str(frame_root), "--device", "cpu"]
    line = error_line(CliRunner().invoke(cli, args))
    assert f"{odd}: 'net' has keys that are not names" in line, line


def test_predict_refuses_a_non_finite_checkpoint_in_one_line(
    frame_root: Path, run_dir: Path, tmp_path: Path, error_line
) -> None:
    copy = _tampered(run_dir, tmp_path, _nan_weight)
    recording = sorted((frame_root / "extract").rglob("*.aedat"))[0]
    args = ["predict", str(copy / LATEST), str(recording), "--out-dir", str(tmp_path / "out")]
    line = error_line(CliRunner().invoke(cli, [*args, "--device", "cpu"]))
    assert f"{copy / LATEST}: weight fc1.weight holds non-finite values (NaN or inf)" in line, line
    assert "lower --lr" in line
