"""A run whose loss or weights become non-finite stops with one line naming the epoch and the
step, and leaves its last finite checkpoint as the latest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import dvsgkit.objective as objective
import dvsgkit.train as tr
from dvsgkit.config import TrainConfig
from dvsgkit.objective import TrainingDiverged
from dvsgkit.run import BEST, LATEST, RUN_LOCK, read_metrics
from dvsgkit.run.checkpoint import load_checkpoint
from dvsgkit_cli.main import cli

# 24 training samples in batches of 8: 3 steps per epoch
TINY = {"T": 4, "channels": 4, "batch_size": 8, "workers": 0, "device": "cpu", "progress": False}


def test_a_diverging_run_stops_in_one_line_and_writes_no_checkpoint(
    frame_root: Path, tmp_path: Path
) -> None:
    # SGD at 1e30 sends the BatchNorm statistics to inf within the first epoch, while the loss
    # of the spiking net stays finite (a NaN membrane never fires): this run used to finish.
    args = ["train", "-T", "4", "--channels", "4", "-b", "8", "-j", "0", "--device", "cpu",
            "--epochs", "3", "--opt", "sgd", "--lr", "1e30", "--root", str(frame_root),
            "--out-dir", str(tmp_path), "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    line = errors[0]
    assert line.startswith("Error: training diverged in epoch 0, at step "), line
    assert " of 3: the weights (bns." in line and "became non-finite (NaN or inf)" in line, line
    assert line.endswith("no checkpoint was written; train again with a lower --lr (this run's: "
                         "1e+30)"), line  # fmt: skip
    (run_dir,) = tmp_path.iterdir()
    assert not list(run_dir.glob("*.pth")) and not (run_dir / RUN_LOCK).exists()


@pytest.mark.parametrize("what", ["weights", "loss"])
def test_the_last_finite_checkpoint_stays_the_latest(
    frame_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """Epoch 0 trains as usual; in epoch 1 the second step trains on a NaN loss, or with a
    weight turned NaN. The run stops there, naming both, and writes nothing of epoch 1."""
    real, steps = objective.score_batch, []

    def poisoned(net, frames, labels, sums, *, amp):  # noqa: ANN001, ANN202
        if net.training:
            steps.append(None)
        poison = net.training and len(steps) == 3 + 2  # epoch 1, step 2
        if poison and what == "weights":
            with torch.no_grad():
                net.convs[0].weight[0, 0, 0, 0] = float("nan")
        loss, pred = real(net, frames, labels, sums, amp=amp)
        return (loss * float("nan") if poison and what == "loss" else loss), pred

    monkeypatch.setattr(objective, "score_batch", poisoned)
    config = TrainConfig(root=str(frame_root), out_dir=str(tmp_path), epochs=3, **TINY)
    with pytest.raises(TrainingDiverged) as err:
        tr.train(config)
    run_dir = config.run_dir()
    message = str(err.value)
    became = {"weights": "the weights (convs.0.weight, ", "loss": "the loss and the weights ("}
    assert message.startswith(f"training diverged in epoch 1, at step 2 of 3: {became[what]}")
    assert f"{run_dir / LATEST} stays the latest checkpoint (nothing of epoch 1 was written)" in (
        message
    )
    assert load_checkpoint(run_dir / LATEST)["epoch"] == 0  # and finite: loading checks it
    assert load_checkpoint(run_dir / BEST)["epoch"] == 0
    assert [r["epoch"] for r in read_metrics(run_dir)] == [0]
    assert not (run_dir / RUN_LOCK).exists()
