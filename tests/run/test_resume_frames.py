"""Resume continues on the frames the run trained on: another store is refused (one line naming
what differs) unless --allow-new-store; a rebuild from the same events is the same data."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dvsgkit.config import TrainConfig
from dvsgkit.frames import FrameSpec
from dvsgkit.framestore.build import build_frame_store, frame_store_path
from dvsgkit.run import CONFIG, FRAMES_RECORD, LATEST, read_metrics
from dvsgkit.run.checkpoint import load_checkpoint, save_checkpoint
from dvsgkit.train import train
from dvsgkit_cli.main import cli

TINY = {"T": 4, "channels": 4, "batch_size": 8, "workers": 0, "device": "cpu", "progress": False}


@pytest.fixture
def one_epoch(frame_root: Path, tmp_path: Path) -> TrainConfig:
    config = TrainConfig(root=str(frame_root), out_dir=str(tmp_path / "runs"), epochs=1, **TINY)
    train(config)
    return config


def _files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


def test_a_checkpoint_and_the_run_record_the_frame_store(one_epoch: TrainConfig) -> None:
    store = frame_store_path(Path(one_epoch.root), FrameSpec(4, "number"))
    frames = load_checkpoint(one_epoch.run_dir() / LATEST)["frames"]
    assert frames["path"] == str(store) and len(frames["build_id"]) == 32
    assert len(frames["events_checksum"]) == 64
    assert (frames["T"], frames["split_by"]) == (4, "number")
    assert frames["samples"] == {"train": 24, "test": 12}
    record = json.loads((one_epoch.run_dir() / FRAMES_RECORD).read_text())
    assert record == [{"first_epoch": 0, **frames}]


def test_resume_on_other_data_is_refused_and_changes_nothing(
    one_epoch: TrainConfig, tiny_root: Path
) -> None:
    run_dir = one_epoch.run_dir()
    before = _files(run_dir)
    other = replace(one_epoch, epochs=2, root=str(tiny_root))
    with pytest.raises(ValueError) as err:
        train(other, resume=run_dir / LATEST)
    message = str(err.value)
    assert "\n" not in message
    store = frame_store_path(tiny_root, FrameSpec(4, "number"))
    assert message.startswith(f"cannot resume {run_dir / LATEST} on {store}: "), message
    assert "train samples 24 (now 12)" in message and "events checksum" in message
    assert f"pass --root {one_epoch.root} to continue" in message
    assert "--allow-new-store" in message
    assert _files(run_dir) == before  # config.json keeps the run's root; no epoch was trained


def test_allow_new_store_continues_on_the_other_data_and_records_it(
    one_epoch: TrainConfig, tiny_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = one_epoch.run_dir()
    other = replace(one_epoch, epochs=2, root=str(tiny_root))
    train(other, resume=run_dir / LATEST, allow_new_store=True)
    out = capsys.readouterr().out
    assert "warning: continuing on other frames, as --allow-new-store asks: events checksum" in out
    assert "train samples 24 (now 12)" in out
    assert [r["train_samples"] for r in read_metrics(run_dir)] == [24, 8]  # 12 in batches of 8
    record = json.loads((run_dir / FRAMES_RECORD).read_text())
    assert [(e["first_epoch"], e["samples"]["train"]) for e in record] == [(0, 24), (1, 12)]
    assert load_checkpoint(run_dir / LATEST)["frames"]["samples"]["train"] == 12
    assert TrainConfig.load_json(run_dir / CONFIG).root == str(tiny_root)


def test_a_rebuilt_store_of_the_same_events_is_the_same_data(
    one_epoch: TrainConfig, frame_root: Path, copy_root, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    # The same events.h5 in another root, its frames built again: a new build_id.
    copy = copy_root(frame_root, tmp_path / "copy", with_=("events",))
    build_frame_store(copy, FrameSpec(4, "number"), workers=1, progress=False)
    old = load_checkpoint(one_epoch.run_dir() / LATEST)["frames"]
    train(replace(one_epoch, epochs=2, root=str(copy)), resume=one_epoch.run_dir())
    assert "is a rebuild or copy of the run's frame store" in capsys.readouterr().out
    new = load_checkpoint(one_epoch.run_dir() / LATEST)["frames"]
    assert new["build_id"] != old["build_id"]
    assert new["events_checksum"] == old["events_checksum"]
    record = json.loads((one_epoch.run_dir() / FRAMES_RECORD).read_text())
    assert [e["build_id"] for e in record] == [old["build_id"], new["build_id"]]


def test_a_checkpoint_without_provenance_resumes_with_a_warning(
    one_epoch: TrainConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    latest = one_epoch.run_dir() / LATEST
    ckpt = torch.load(latest, weights_only=True)
    del ckpt["frames"]  # as an older dvsgkit wrote it
    save_checkpoint(ckpt, latest)
    train(replace(one_epoch, epochs=2), resume=latest)
    out = capsys.readouterr().out
    assert f"warning: {latest} does not record the frame store it trained on" in out
    assert [r["epoch"] for r in read_metrics(one_epoch.run_dir())] == [0, 1]


def test_cli_refuses_other_data_in_one_line(one_epoch: TrainConfig, tiny_root: Path) -> None:
    args = ["train", "-T", "4", "--channels", "4", "-b", "8", "-j", "0", "--device", "cpu"]
    args += ["--epochs", "2", "--no-progress", "--root", str(tiny_root)]
    args += ["--resume", str(one_epoch.run_dir())]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "train samples 24 (now 12)" in errors[0], result.output
    assert "Traceback" not in result.output
    allowed = CliRunner().invoke(cli, [*args, "--allow-new-store"])
    assert allowed.exit_code == 0, allowed.output
    assert [r["train_samples"] for r in read_metrics(one_epoch.run_dir())] == [24, 8]


def test_a_store_rebuilt_from_other_events_at_the_same_path_is_refused(
    tmp_path: Path, frame_root: Path, tiny_root: Path, copy_root
) -> None:
    root = copy_root(frame_root, tmp_path / "data", with_=("events",))
    config = TrainConfig(root=str(root), out_dir=str(tmp_path / "runs"), epochs=1, **TINY)
    run_dir = train(config).run_dir
    copy_root(tiny_root, root, with_=("events",))  # 'dvsgkit events' of other data
    with pytest.raises(ValueError) as err:
        train(replace(config, epochs=2), resume=run_dir)
    message = str(err.value)
    assert "other frames (this store was rebuilt since): events checksum" in message, message
    assert "train samples 24 (now 12)" in message and "--root" not in message


def test_an_unreadable_frames_record_is_started_again(
    one_epoch: TrainConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    record = one_epoch.run_dir() / FRAMES_RECORD
    record.write_bytes(b'[{"first_epoch": "x"}, \xff')
    train(replace(one_epoch, epochs=2), resume=one_epoch.run_dir())
    assert f"note: {record} was unreadable" in capsys.readouterr().out
    assert [e["first_epoch"] for e in json.loads(record.read_text())] == [1]
    record.write_text('[{"first_epoch": "x"}, {"first_epoch": 0}]')
    train(replace(one_epoch, epochs=3), resume=one_epoch.run_dir())
    assert [e["first_epoch"] for e in json.loads(record.read_text())] == [0, 2]
