"""Evaluation maths, reports, figures; `dvsgkit evaluate` and `dvsgkit plot` on real runs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dvsgkit.constants import CLASS_NAMES, SPIKINGJELLY_LABEL_ORDER
from dvsgkit.errors import StorageError
from dvsgkit.evaluate import Evaluation, confusion_matrix, per_class_accuracy, write_outputs
from dvsgkit.frames import FrameSpec
from dvsgkit.plots import plot_confusion, plot_curves, plot_run
from dvsgkit.run import read_metrics
from dvsgkit_cli.main import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_confusion_matrix_counts_true_by_predicted() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    preds = np.array([0, 1, 1, 2, 0, 2])
    cm = confusion_matrix(labels, preds, k=3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    acc = per_class_accuracy(np.pad(cm, ((0, 1), (0, 1))))  # a 4th class with no samples
    assert acc[:3].tolist() == [0.5, 1.0, 2 / 3] and np.isnan(acc[3])
    with pytest.raises(ValueError, match=r"predictions must lie in 0..2, got 0..3"):
        confusion_matrix(labels, np.array([0, 1, 1, 2, 0, 3]), k=3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(labels, preds[:2], k=3)


def _evaluation(matrix: np.ndarray) -> Evaluation:
    return Evaluation("runs/x/checkpoint_max.pth", "dvsgkit", 7, "test", FrameSpec(16, "number"),
                      8, 0.0421, matrix)  # fmt: skip


def test_report_and_json_name_every_class(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 5, (11, 11)) + np.diag(np.full(11, 20))
    matrix[4] = 0  # a class absent from this split
    result = _evaluation(matrix)
    assert result.samples == matrix.sum()
    assert result.accuracy == pytest.approx(np.trace(matrix) / matrix.sum())
    text = result.report()
    for name in CLASS_NAMES:
        assert name in text
    assert f"accuracy {100 * result.accuracy:.2f} %" in text
    paths = write_outputs(result, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["confusion_matrix"] == matrix.tolist()
    assert data["per_class_accuracy"]["hand clapping"] == matrix[0, 0] / matrix[0].sum()
    assert data["per_class_accuracy"][CLASS_NAMES[4]] is None
    assert data["per_class_samples"][CLASS_NAMES[4]] == 0
    assert paths["text"].read_text().strip() == text
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "checkpoint_max_test_confusion.png",
        "checkpoint_max_test_eval.json",
        "checkpoint_max_test_eval.txt",
    ]


def test_outputs_that_cannot_be_written_are_one_line_naming_the_path(
    tmp_path: Path, small_fs: Path
) -> None:
    result = _evaluation(np.diag(np.full(11, 3)))
    fix = "give another --out-dir, or free some space"
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    cause = "part of the path is a file, not a folder"
    with pytest.raises(StorageError) as err:
        write_outputs(result, afile / "out")
    assert str(err.value) == f"cannot create the folder {afile / 'out'}: {cause}; {fix}"
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    with pytest.raises(StorageError) as err:
        write_outputs(result, small_fs)
    json_path = small_fs / "checkpoint_max_test_eval.json"
    assert str(err.value) == f"cannot write {json_path}: read-only file system; {fix}"


def test_plots_write_pngs_and_refuse_bad_input(tmp_path: Path) -> None:
    records = [
        {
            "epoch": e,
            "train_loss": 1 / (e + 1),
            "test_loss": 1.2 / (e + 1),
            "train_acc": e / 5,
            "test_acc": e / 6,
        }  # fmt: skip
        for e in range(5)
    ]
    assert plot_curves(records, tmp_path / "c.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="no epochs to plot"):
        plot_curves([], tmp_path / "e.png")
    with pytest.raises(ValueError, match=r"must be \[11, 11\]"):
        plot_confusion(np.zeros((3, 3)), CLASS_NAMES, tmp_path / "m.png")
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match="metrics.jsonl not found"):
        plot_run(tmp_path / "run")
    (tmp_path / "run" / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records) + "{not json\n"
    )
    with pytest.raises(ValueError, match=r"metrics.jsonl:6 is not JSON"):
        read_metrics(tmp_path / "run")
    assert not list(tmp_path.glob(".*partial"))


def test_plot_cli(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"epoch": e, "train_loss": 0.1, "test_loss": 0.2, "train_acc": 0.5, "test_acc": 0.4}
             for e in range(3)]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = CliRunner().invoke(cli, ["plot", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "curves.png").read_bytes()[:8] == PNG_MAGIC
    result = CliRunner().invoke(cli, ["plot", str(tmp_path)])
    assert result.exit_code == 1 and "metrics.jsonl not found" in result.output


@pytest.fixture(scope="module")
def trained(small_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset root, run directory) of a one-epoch run on the shared small root (24/12, T=4)."""
    from dvsgkit.config import TrainConfig
    from dvsgkit.train import train

    out = tmp_path_factory.mktemp("runs")
    config = TrainConfig(T=4, channels=4, batch_size=4, epochs=1, workers=0, device="cpu",
                         root=str(small_root), out_dir=str(out), progress=False)  # fmt: skip
    return small_root, train(config).run_dir


def test_evaluate_cli_on_a_dvsgkit_checkpoint(trained: tuple[Path, Path]) -> None:
    root, run_dir = trained
    args = ["evaluate", str(run_dir / "checkpoint_max.pth"), "--root", str(root), "--device", "cpu"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads((run_dir / "checkpoint_max_test_eval.json").read_text())
    assert data["source"] == "dvsgkit" and data["T"] == 4 and data["samples"] == 12
    max_acc = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["max_test_acc"]
    assert data["accuracy"] == pytest.approx(max_acc)  # the same net on the same frames
    assert "confusion matrix" in result.output and "hand clapping" in result.output
    assert (run_dir / "checkpoint_max_test_confusion.png").read_bytes()[:8] == PNG_MAGIC
    # A run directory means its latest checkpoint; --split train scores the other split.
    args = ["evaluate", str(run_dir), "--root", str(root), "--device", "cpu", "--split", "train"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads((run_dir / "checkpoint_latest_train_eval.json").read_text())
    assert data["split"] == "train" and data["samples"] == 24 and data["epoch"] == 0


def test_evaluate_without_root_scores_the_root_its_run_recorded(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dvsgkit.run import LATEST
    from dvsgkit.run.checkpoint import save_checkpoint

    root, run_dir = trained
    monkeypatch.chdir(tmp_path)  # where no data/ is
    monkeypatch.delenv("DVSGKIT_ROOT", raising=False)
    args = ["evaluate", str(run_dir), "--device", "cpu", "--out-dir", str(tmp_path / "eval")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"(dataset root {root}, as the run recorded; --root to change)" in result.output
    data = json.loads((tmp_path / "eval" / "checkpoint_latest_test_eval.json").read_text())
    assert data["root"] == str(root) and data["samples"] == 12
    assert not (tmp_path / "data").exists()

    # A relative root recorded in another working directory: named, with the fix.
    ckpt = torch.load(run_dir / LATEST, weights_only=True)
    ckpt["config"]["root"] = "data/demo"
    save_checkpoint(ckpt, tmp_path / "moved.pth")
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "moved.pth"), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: data/demo, the dataset root recorded in {tmp_path / 'moved.pth'}, is not a folder "
        f"here (in {tmp_path}); pass --root\n"
    )


def test_evaluate_cli_refuses_a_malformed_device(trained: tuple[Path, Path]) -> None:
    root, run_dir = trained
    args = ["evaluate", str(run_dir), "--root", str(root), "--device", "gpu"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "use cpu, cuda or cuda:N" in result.output, result.output


def test_evaluate_imports_a_spikingjelly_checkpoint(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """A PythonNet-keyed state dict with SpikingJelly's output order scores like the original."""
    from dvsgkit.evaluate import evaluate, load_net
    from dvsgkit.run.checkpoint import load_checkpoint

    root, run_dir = trained
    ours = load_checkpoint(run_dir / "checkpoint_max.pth")["net"]
    sj = {}
    for i in range(5):
        sj[f"conv.{4 * i}.weight"] = ours[f"convs.{i}.weight"]
        for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            sj[f"conv.{4 * i + 1}.{key}"] = ours[f"bns.{i}.{key}"]
    sj["fc.2.weight"] = ours["fc1.weight"]
    # SpikingJelly's output group j means true label SPIKINGJELLY_LABEL_ORDER[j]
    groups = ours["fc2.weight"].reshape(11, 10, -1)
    sj["fc.5.weight"] = groups[list(SPIKINGJELLY_LABEL_ORDER)].reshape(110, -1).clone()
    path = tmp_path / "sj_checkpoint_max.pth"
    torch.save({"net": sj, "epoch": 3, "max_test_acc": 0.5}, path)
    result = evaluate(path, root=root, T=4, device="cpu", progress=False)
    theirs = evaluate(run_dir / "checkpoint_max.pth", root=root, device="cpu", progress=False)
    assert result.source == "spikingjelly" and result.epoch == 3
    assert result.frames == FrameSpec(4, "number")  # -T given, split_by training's default
    assert load_net(path)[1]["frames"] is None  # SpikingJelly records no frames
    assert np.array_equal(result.confusion, theirs.confusion)


def test_a_checkpoint_tells_the_frames_its_run_trained_on(trained: tuple[Path, Path]) -> None:
    from dvsgkit.evaluate import load_net

    root, run_dir = trained
    _, meta = load_net(run_dir)
    assert meta["frames"] == FrameSpec(4, "number") and (meta["T"], meta["split_by"]) == (
        4,
        "number",
    )
    assert (meta["source"], meta["epoch"], meta["channels"], meta["root"]) == (
        "dvsgkit", 0, 4, str(root),
    )  # fmt: skip
