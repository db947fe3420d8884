"""The frame options through the commands: `dvsgkit frames` builds each option's store beside the
others and refuses bad values with one line; `dvsgkit train` trains on a --duration store
(padded batches) and on a --size 32 store; the checkpoint carries the FrameSpec, and
`evaluate`, `predict`, `show` and `info` follow it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from dvsgkit.evaluate import load_net
from dvsgkit.frames import FrameSpec
from dvsgkit.run import read_metrics
from dvsgkit_cli.main import cli

TRAIN = ["--channels", "4", "-b", "4", "-j", "0", "--device", "cpu", "--epochs", "2",
         "--no-progress"]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "option", "fix"),
    [
        (["--duration", "0"], "--duration 0", "give e.g. --duration 10ms"),
        (["--bin", "0ms"], "--bin 0ms", "give e.g. --bin 10ms"),
        (["--denoise", "0"], "--denoise 0", "give e.g. --denoise 10ms"),
        (["--bin", "100s"], "--bin 100s is longer than every sample", "give a shorter --bin"),
        (["--duration", "100s"], "--duration 100s is longer than every sample",
         "give a shorter --duration"),
        (["--size", "100"], "--size 100 is not a frame size", "give --size 64 or --size 32"),
        (["--bin", "10ms", "--duration", "50ms"], "--duration and --bin", "give one of them"),
        (["--duration", "50ms", "-T", "8"], "--duration gives each sample", "drop -T"),
        (["--duration", "soon"], "--duration 'soon' is not a duration", "write e.g."),
    ],
)  # fmt: skip
def test_bad_frame_values_get_one_line_naming_the_option_and_the_fix(
    tiny_root: Path, copy_root, tmp_path: Path, error_line, args: list[str], option: str,
    fix: str,
) -> None:  # fmt: skip
    root = copy_root(tiny_root, tmp_path / "root", with_=("events",))
    before = sorted(p.name for p in root.iterdir())
    line = error_line(CliRunner().invoke(cli, ["frames", "--root", root, "--no-progress", *args]))
    assert option in line and fix in line
    assert sorted(p.name for p in root.iterdir()) == before  # nothing half-written
    # train takes the same options and refuses them alike, before any run directory
    runs = tmp_path / "runs"
    line = error_line(
        CliRunner().invoke(cli, ["train", "--root", root, "--out-dir", runs, *TRAIN, *args])
    )
    assert option in line and fix in line and not runs.exists()


def test_stores_of_each_option_live_side_by_side(
    tiny_root: Path, copy_root, tmp_path: Path, run_cli
) -> None:
    root = copy_root(tiny_root, tmp_path / "root", with_=("events", "frames"))
    runs = {
        ("--duration", "500ms"): "duration_500000",
        ("--bin", "400ms", "-T", "6"): "bin_400000_T_6",
        ("-T", "4", "--size", "32", "--denoise", "10ms"):
            "frames_number_4_split_by_number_size_32_denoise_10000",
    }  # fmt: skip
    for args, name in runs.items():
        code, out = run_cli("frames", "--root", root, "--no-progress", *args)
        assert code == 0 and f"wrote {root / name}.zarr: 12 train + 12 test samples" in out, out
    for args, name in runs.items():  # a rerun does nothing
        code, out = run_cli("frames", "--root", root, "--no-progress", *args)
        assert code == 0 and f"{root / name}.zarr is up to date" in out, out
    code, out = run_cli("info", root)
    assert code == 0 and "frames_number_4_split_by_number.zarr" in out
    assert "duration 500ms (frames per sample vary)" in out and "bins of 400ms, T=6" in out
    assert "T=4, split_by=number, size 32, denoise 10ms" in out
    code, out = run_cli("info", root / "duration_500000.zarr")
    assert code == 0 and "frames          duration 500ms" in out
    lengths = np.diff(
        zarr.open_group(root / "duration_500000.zarr", mode="r")["train/frame_offsets"][:]
    )
    assert lengths.min() > 0  # every sample has events, so frames
    assert f"train           12 samples, uint8 [{lengths.sum()}, 2, " in out, out
    assert f"frames per sample {lengths.min()}..{lengths.max()} (mean {lengths.mean():.1f})" in out


def _only_run(runs: Path) -> Path:
    (run,) = runs.iterdir()
    return run


def test_train_on_a_duration_store_and_everything_downstream_follows_it(
    tiny_root: Path, copy_root, tmp_path: Path, run_cli
) -> None:
    root = copy_root(tiny_root, tmp_path / "root", with_=("recordings", "events"))
    runs = tmp_path / "runs"
    code, out = run_cli("train", "--root", root, "--duration", "500ms", "--out-dir", runs, *TRAIN)
    assert code == 0, out
    assert (root / "duration_500000.zarr").is_dir()
    run = _only_run(runs)
    assert run.name.startswith("duration_500000_b_4_c_4_")
    assert [m["epoch"] for m in read_metrics(run)] == [0, 1]
    checkpoint = run / "checkpoint_latest.pth"
    _, meta = load_net(checkpoint)
    assert meta["frames"] == FrameSpec(duration_us=500_000)

    code, out = run_cli("evaluate", run, "--device", "cpu", "--no-progress", "--root", root)
    assert code == 0 and "duration 500ms (frames per sample vary)" in out, out

    recording = sorted((root / "extract" / "DvsGesture").glob("user*.aedat"))[0]
    code, out = run_cli("predict", checkpoint, recording, "--device", "cpu", "--window", "1s",
                        "--hop", "1s", "--out-dir", tmp_path / "pred")  # fmt: skip
    assert code == 0, out
    (saved,) = (tmp_path / "pred").glob("*_predictions.json")
    record = json.loads(saved.read_text())
    assert record["duration_us"] == 500_000 and record["windows"]

    code, out = run_cli("show", "--root", root, "--index", "0", "--frame-duration", "500ms",
                        "--out-dir", tmp_path / "show")  # fmt: skip
    assert code == 0 and (tmp_path / "show" / "test_0_duration_500000.gif").is_file(), out


def test_train_on_a_size_32_store(tiny_root: Path, copy_root, tmp_path: Path, run_cli) -> None:
    root = copy_root(tiny_root, tmp_path / "root", with_=("events",))
    runs = tmp_path / "runs"
    code, out = run_cli("train", "--root", root, "-T", "4", "--size", "32", "--out-dir", runs,
                        *TRAIN)  # fmt: skip
    assert code == 0, out
    assert (root / "frames_number_4_split_by_number_size_32.zarr").is_dir()
    run = _only_run(runs)
    assert len(read_metrics(run)) == 2
    net, meta = load_net(run / "checkpoint_latest.pth")
    assert meta["frames"] == FrameSpec(4, size=32) and net.size == 32
    assert net.fc1.in_features == 4  # channels x (32 / 32)^2: the classifier follows --size
    code, out = run_cli("evaluate", run, "--device", "cpu", "--no-progress", "--root", root)
    assert code == 0 and "T=4, split_by=number, size 32" in out, out
    code, out = run_cli("evaluate", run, "--device", "cpu", "--no-progress", "--root", root,
                        "--size", "64")  # fmt: skip
    assert code == 1 and "--size 64" in out and "give --size 32" in out
