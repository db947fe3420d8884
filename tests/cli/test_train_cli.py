"""`dvsgkit train` and `dvsgkit demo` through click: options, output, refusals, resume."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from dvsgkit.config import DEFAULTS, TrainConfig
from dvsgkit.frames import FrameSpec
from dvsgkit.framestore.layout import frame_store_path
from dvsgkit.run import read_metrics
from dvsgkit_cli.main import cli

RUN = "T_4_b_4_c_4_sgd_lr_0.01_steplr_1_0.5"


def _train(root: Path | None, out: Path, *extra: str) -> object:
    args = ["train", "-T", "4", "--channels", "4", "-b", "4", "-j", "0", "--device", "cpu"]
    args += ["--opt", "sgd", "--lr", "0.01", "--lr-scheduler", "steplr", "--step-size", "1"]
    args += ["--gamma", "0.5", "--out-dir", str(out), "--no-progress"]
    args += [] if root is None else ["--root", str(root)]
    return CliRunner().invoke(cli, [*args, *extra])


def test_every_config_option_defaults_to_train_config() -> None:
    from dvsgkit.config import FRAME_FIELDS
    from dvsgkit_cli.common import frame_spec
    from dvsgkit_cli.train import train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    options = [p for p in train.params if p.name in fields and p.name != "device"]
    # --device alone differs: the CLI picks cuda:0 when one is visible (TrainConfig says cpu).
    assert {p.name for p in options} == fields - {"device"}
    # The frame options' defaults are FrameSpec's (-T: 16, unless --duration or --bin).
    frames = {p.name: p.default for p in options if p.name in FRAME_FIELDS}
    assert frames["T"] is None and frame_spec(dict(frames)) == DEFAULTS.frame_spec
    for param in options:
        if param.name in FRAME_FIELDS:
            continue
        default = param.default if param.name != "out_dir" else str(param.default)
        assert default == getattr(DEFAULTS, param.name), param.name


def test_help_lists_the_seed_options() -> None:
    result = CliRunner().invoke(cli, ["train", "--help"])
    assert result.exit_code == 0
    for option in ("-T", "--device", "-b, --batch-size", "--epochs", "-j, --workers", "--channels",
                   "--root", "--out-dir", "--resume", "--amp", "--cupy", "--opt [sgd|adam]",
                   "--lr", "--momentum", "--lr-scheduler [cosalr|steplr]", "--step-size",
                   "--gamma", "--T-max", "--split-by", "--seed", "--sync-bn"):  # fmt: skip
        assert option in result.output, option
    assert "default: 2020" in result.output and "default: 64" in result.output


def test_train_then_extend_with_resume(frame_root: Path, tmp_path: Path) -> None:
    result = _train(frame_root, tmp_path, "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert "epoch=0, train_loss=" in result.output and "train_samples/s=" in result.output
    run_dir = tmp_path / RUN
    assert f"run directory {run_dir}" in result.output

    again = _train(frame_root, tmp_path, "--epochs", "1")
    assert again.exit_code == 1 and "already holds a run (finished" in again.output
    assert "Traceback" not in again.output

    latest = str(run_dir / "checkpoint_latest.pth")
    longer = _train(frame_root, tmp_path, "--epochs", "2", "--resume", latest)
    assert longer.exit_code == 0, longer.output
    assert "epoch=1," in longer.output and "epoch=0," not in longer.output
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [0, 1]
    assert [r["lr"] for r in records] == pytest.approx([0.01, 0.005])  # StepLR(1, 0.5)

    done = _train(frame_root, tmp_path, "--epochs", "2", "--resume", str(run_dir))
    assert done.exit_code == 1 and "pass --epochs larger than 2" in done.output
    other = _train(frame_root, tmp_path, "--epochs", "3", "--channels", "8", "--resume", latest)
    assert other.exit_code == 1 and "channels=4 (now 8)" in other.output


def test_a_resume_without_root_continues_on_the_root_the_run_recorded(
    frame_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _train(frame_root, tmp_path / "runs", "--epochs", "1").exit_code == 0
    run_dir = tmp_path / "runs" / RUN
    monkeypatch.chdir(tmp_path)  # where no data/ is
    monkeypatch.delenv("DVSGKIT_ROOT", raising=False)
    result = _train(None, tmp_path / "runs", "--epochs", "2", "--resume", str(run_dir))
    assert result.exit_code == 0, result.output
    assert f"note: dataset root {frame_root}, as the run recorded (--root to change)" in (
        result.output
    )
    assert [r["epoch"] for r in read_metrics(run_dir)] == [0, 1]
    assert TrainConfig.load_json(run_dir / "config.json").root == str(frame_root)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--amp"], "--amp needs a CUDA device"),
        (["--cupy"], "--cupy"),
        (
            ["--fused"],
            "--fused runs the fused CuPy kernels of the layer-by-layer network; add --cupy",
        ),
        (["--device", "cuda:0"], "no CUDA device here"),
        (["--device", "gpu"], "'gpu' is not a supported device; use cpu, cuda or cuda:N"),
        (["--opt", "rmsprop"], "'rmsprop' is not one of 'sgd', 'adam'"),
        (["-T", "0"], "0 is not in the range x>=1"),
        (["--resume", "missing.pth"], "does not exist"),
        (["--device", "mps"], "'mps' is not a supported device; use cpu, cuda or cuda:N"),
        (["--device", "meta"], "'meta' is not a supported device"),
        (["--device", "cuda:x"], "'cuda:x' is not a supported device"),
        (["--seed", "-1"], "Invalid value for '--seed': -1 is not in the range 0<=x<=4294967295"),
        (["--seed", str(2**70)], "Invalid value for '--seed'"),
        (["--lr", "nan"], "lr must be a finite number >= 0, got nan"),
        (["--momentum", "inf"], "momentum must be a finite number >= 0, got inf"),
        (["--allow-new-store"], "--allow-new-store applies to --resume only"),
    ],
)
def test_bad_options_exit_non_zero_and_write_nothing(
    frame_root: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    result = _train(frame_root, tmp_path / "runs", "--epochs", "1", *extra)
    assert result.exit_code in (1, 2) and message in result.output, result.output
    assert not (tmp_path / "runs").exists()


def test_a_frame_store_with_another_T_is_refused(frame_root: Path, tmp_path: Path) -> None:
    other = tmp_path / "data"
    other.mkdir()
    shutil.copy2(frame_root / "events.h5", other / "events.h5")
    # A T=4 store where the T=6 one belongs (renamed by hand, say).
    shutil.copytree(
        frame_store_path(frame_root, FrameSpec(4, "number")),
        frame_store_path(other, FrameSpec(6, "number")),
    )
    result = _train(other, tmp_path / "runs", "--epochs", "1", "-T", "6")
    assert result.exit_code == 1
    assert "another configuration (T=4" in result.output, result.output
    assert not (tmp_path / "runs").exists()


def test_corrupt_resume_checkpoint(frame_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint_latest.pth"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    result = _train(frame_root, tmp_path / "runs", "--epochs", "2", "--resume", str(bad))
    assert result.exit_code == 1 and "is not a readable checkpoint" in result.output
    assert not (tmp_path / "runs").exists()


def test_the_options_a_resume_may_change_are_train_options_outside_the_recipe() -> None:
    import click

    from dvsgkit.config import RECIPE_FIELDS
    from dvsgkit.run import resumable_options

    command = cli.get_command(click.Context(cli), "train")
    spelled = {o for p in command.params for o in [*p.opts, *p.secondary_opts]}
    allowed = resumable_options()
    assert {"--epochs", "--device", "--amp", "--cupy", "--fused", "--compile"} <= set(allowed)
    assert set(allowed) <= spelled
    assert not {f"--{name.replace('_', '-')}" for name in RECIPE_FIELDS} & set(allowed)
