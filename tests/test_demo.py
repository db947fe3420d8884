"""The demo at toy size: every stage runs, outputs land, a rerun replaces only its own run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dvsgkit.demo import run_demo
from dvsgkit.run import read_metrics


def test_demo_runs_end_to_end_and_reruns_cleanly(tmp_path: Path) -> None:
    root, out = tmp_path / "data", tmp_path / "runs"
    kwargs = {"epochs": 1, "train_trials": 2, "test_trials": 1, "progress": False, "log": False}
    result = run_demo(root, out, **kwargs)
    assert result.run_dir.parent == out
    assert [r["epoch"] for r in read_metrics(result.run_dir)] == [0]
    for path in (result.curves, result.confusion, result.best_checkpoint):
        assert path.is_file() and path.parent == result.run_dir
    evaluation = json.loads((result.run_dir / "checkpoint_max_test_eval.json").read_text())
    assert evaluation["samples"] == 12 and evaluation["accuracy"] == result.max_test_acc
    assert (root / "events.h5").is_file()

    (result.run_dir / "stale.txt").write_text("from the first demo")
    again = run_demo(root, out, **kwargs)  # the demo's own previous run is replaced
    assert again.run_dir == result.run_dir and not (again.run_dir / "stale.txt").exists()

    config = json.loads((again.run_dir / "config.json").read_text())
    config["momentum"] = 0.5  # now it looks like somebody else's run: never deleted
    (again.run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileExistsError, match="is not a previous demo run"):
        run_demo(root, out, **kwargs)
    assert (again.run_dir / "checkpoint_latest.pth").is_file()


def test_a_rerun_with_other_progress_bars_is_still_the_demos_own_run(tmp_path: Path) -> None:
    from dvsgkit.config import TrainConfig
    from dvsgkit.demo import DEMO_CONFIG

    root, out = tmp_path / "data", tmp_path / "runs"
    config = TrainConfig(root=str(root), out_dir=str(out), **{**DEMO_CONFIG, "epochs": 1,
                                                              "T_max": 1})  # fmt: skip
    config.run_dir().mkdir(parents=True)
    config.save_json(config.run_dir() / "config.json")  # written by `dvsgkit demo` (bars on)
    kwargs = {"epochs": 1, "train_trials": 2, "test_trials": 1, "log": False}
    result = run_demo(root, out, progress=False, **kwargs)  # its own run: replaced
    assert result.run_dir == config.run_dir()
    (result.run_dir / "config.json").write_text("[]")  # unreadable: never deleted
    with pytest.raises(FileExistsError, match="is not a previous demo run"):
        run_demo(root, out, progress=False, **kwargs)


def test_the_next_commands_use_the_demos_root_and_work_when_pasted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shlex

    from click.testing import CliRunner

    from dvsgkit_cli.main import cli

    monkeypatch.chdir(tmp_path)  # relative paths, as `dvsgkit demo` prints them
    monkeypatch.delenv("DVSGKIT_ROOT", raising=False)
    root = Path("demo data")  # a space: pasted, the paths must stay whole
    kwargs = {"epochs": 1, "train_trials": 2, "test_trials": 1, "progress": False, "log": False}
    result = run_demo(root, Path("runs"), **kwargs)
    commands = result.next_commands()
    assert [c.split()[1] for c in commands] == ["evaluate", "show", "predict"]
    for command in commands:
        args = shlex.split(command)
        assert args[0] == "dvsgkit" and any(a.startswith(str(root)) for a in args), command
        done = CliRunner().invoke(cli, args[1:])
        assert done.exit_code == 0, f"{command}\n{done.output}"
    assert not Path("data").exists()  # nothing went to the default root
