"""What `dvsgkit predict` writes (`dvsgkit.predict.outputs`): the CSV, JSON and timeline of each
recording, in ./predictions/ by default, with a summary line; SpikingJelly checkpoints too."""

from __future__ import annotations

import json
from collections.abc import Callable
from csv import DictReader
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dvsgkit.constants import NUM_CLASSES
from dvsgkit.frames import FrameSpec
from dvsgkit.io.labels import read_labels
from dvsgkit.io.recordings import iter_recording
from dvsgkit.predict.outputs import CSV_COLUMNS, RATE_COLUMNS
from dvsgkit.predict.windows import Prediction
from dvsgkit_cli.main import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T = 4  # the trained network's (conftest)


def read_predictions_csv(path: Path) -> dict[str, np.ndarray]:
    """A predictions CSV back as columns (numbers as arrays, -1 for an empty true_label)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(DictReader(f))
    assert rows and tuple(rows[0]) == CSV_COLUMNS
    out = {c: np.array([row[c] for row in rows]) for c in CSV_COLUMNS}
    for c in ("start_s", *RATE_COLUMNS):
        out[c] = out[c].astype(np.float64)
    for c in ("start_us", "end_us", "events", "predicted", "true_label"):
        out[c] = np.array([int(v) if v else -1 for v in out[c]], dtype=np.int64)
    return out


def test_predict_cli_writes_scores_and_learns(
    trained: tuple[Path, Path], recording: tuple[Path, Path], tmp_path: Path
) -> None:
    _, ckpt = trained
    aedat, csv = recording
    out = tmp_path / "out"
    args = ["predict", str(ckpt), str(aedat), "--labels", str(csv), "--window", "3s",
            "--hop", "1s", "--out-dir", str(out), "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    stem = aedat.stem
    assert sorted(p.name for p in out.iterdir()) == [
        f"{stem}_predictions.csv",
        f"{stem}_predictions.json",
        f"{stem}_timeline.png",
    ]
    data = json.loads((out / f"{stem}_predictions.json").read_text())
    table = read_predictions_csv(out / f"{stem}_predictions.csv")
    first = min(int(c["t"].min()) for c in iter_recording(aedat))
    last = max(int(c["t"].max()) for c in iter_recording(aedat))
    k = (last + 1 - first - 3_000_000) // 1_000_000 + 1
    assert len(data["windows"]) == len(table["start_us"]) == k
    assert table["start_us"].tolist() == [first + 1_000_000 * i for i in range(k)]
    assert [w["predicted"] for w in data["windows"]] == table["predicted"].tolist()
    rates = np.array([w["rates"] for w in data["windows"]])
    assert rates.shape == (k, NUM_CLASSES)
    assert np.array_equal(rates.argmax(1), table["predicted"])
    # Truth: a window lying whole inside a labelled gesture gets its label, others -1.
    gestures = read_labels(csv)
    for start, end, truth in zip(table["start_us"], table["end_us"], table["true_label"],
                                 strict=True):  # fmt: skip
        inside = gestures[(gestures["start"] <= start) & (gestures["end"] >= end)]
        assert truth == (inside[0]["label"] if len(inside) else -1)
    score = data["score"]
    scored = table["true_label"] >= 0
    assert score["windows_scored"] == scored.sum()
    acc = (table["predicted"][scored] == table["true_label"][scored]).mean()
    assert score["window_accuracy"] == pytest.approx(acc)
    assert acc > 3 / NUM_CLASSES, f"window accuracy {acc:.2f} is not well above chance (0.09)"
    assert len(score["gestures"]) == 12 and score["gestures_scored"] == 12
    assert (out / f"{stem}_timeline.png").read_bytes()[:8] == PNG_MAGIC
    assert "window accuracy" in result.output


def test_predict_writes_into_predictions_here_and_says_how_many_are_right(
    trained: tuple[Path, Path],
    recording: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without --out-dir the outputs go to ./predictions/, never into the dataset folder; the
    summary says how many windows and gestures are right of how many scored."""
    _, ckpt = trained
    aedat, csv = recording
    before = sorted(p.name for p in aedat.parent.iterdir())
    monkeypatch.chdir(tmp_path)
    args = ["predict", str(ckpt), str(aedat), "--labels", str(csv), "--window", "3s", "--hop",
            "1s", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in aedat.parent.iterdir()) == before
    out = Path("predictions")
    assert sorted(p.name for p in out.iterdir()) == [
        f"{aedat.stem}_predictions.csv",
        f"{aedat.stem}_predictions.json",
        f"{aedat.stem}_timeline.png",
    ]
    assert f"csv: {out / aedat.stem}_predictions.csv" in result.output
    score = json.loads((out / f"{aedat.stem}_predictions.json").read_text())["score"]
    windows_right = round(score["window_accuracy"] * score["windows_scored"])
    gestures_right = sum(g["correct"] for g in score["gestures"])
    assert score["gestures_scored"] == 12
    assert (
        f"window accuracy {100 * score['window_accuracy']:.1f} % "
        f"({windows_right} of {score['windows_scored']} right), "
        f"gesture accuracy {100 * score['gesture_accuracy']:.1f} % ({gestures_right} of 12 right)"
    ) in result.output


def test_several_recordings_show_progress(
    trained: tuple[Path, Path], recording: tuple[Path, Path], tmp_path: Path, shortened: Callable
) -> None:
    _, ckpt = trained
    aedat, _ = recording
    recordings = [str(shortened(aedat, tmp_path / f"r{i}.aedat", 3_000_000)) for i in (1, 2)]
    args = ["predict", str(ckpt), *recordings, "--window", "1s", "--hop", "1s", "--device",
            "cpu", "--out-dir", str(tmp_path / "out")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "0/2 [" in result.stderr and "rec/s" in result.stderr, result.stderr  # tqdm
    quiet = CliRunner().invoke(cli, [*args, "--no-progress"])
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr
    assert quiet.stdout.count("windows") == 2


def test_timeline_names_the_labelled_gestures() -> None:
    """The label bands beneath the timeline carry the gestures' names, not class numbers."""
    from dvsgkit.constants import CLASS_NAMES
    from dvsgkit.io.labels import WINDOW_DTYPE
    from dvsgkit.predict.outputs import timeline_figure
    from dvsgkit.predict.windows import score

    gestures = np.array([(3, 1_000_000, 3_000_000, 0), (10, 4_000_000, 6_000_000, 1)],
                        dtype=WINDOW_DTYPE)  # fmt: skip
    pred = Prediction(recording="r.aedat", checkpoint="c.pth", meta={}, frames=FrameSpec(T),
                      mode="labels",
                      window_us=None, hop_us=None, first_t=0, starts=gestures["start"],
                      ends=gestures["end"], counts=np.array([50, 60]),
                      rates=np.eye(NUM_CLASSES, dtype=np.float32)[[3, 2]],
                      gestures=gestures)  # fmt: skip
    pred.score = score(pred)
    figure = timeline_figure(pred)
    bands = [text.get_text().replace("\n", " ") for text in figure.axes[1].texts]
    assert bands == [CLASS_NAMES[3], CLASS_NAMES[10]]


def test_a_spikingjelly_checkpoint_predicts_like_the_original(
    trained: tuple[Path, Path], recording: tuple[Path, Path], tmp_path: Path
) -> None:
    """The trained net saved with PythonNet's keys and SpikingJelly's output order (its label
    folders sorted as strings) predicts the same classes; it records no T, so -T is given."""
    from dvsgkit.constants import SPIKINGJELLY_LABEL_ORDER
    from dvsgkit.run.checkpoint import load_checkpoint

    _, ckpt = trained
    ours = load_checkpoint(ckpt)["net"]
    sj = {"fc.2.weight": ours["fc1.weight"]}
    for i in range(5):
        sj[f"conv.{4 * i}.weight"] = ours[f"convs.{i}.weight"]
        for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            sj[f"conv.{4 * i + 1}.{key}"] = ours[f"bns.{i}.{key}"]
    groups = ours["fc2.weight"].reshape(11, 10, -1)
    sj["fc.5.weight"] = groups[list(SPIKINGJELLY_LABEL_ORDER)].reshape(110, -1).clone()
    sj_path = tmp_path / "checkpoint_max.pth"
    torch.save({"net": sj, "epoch": 3, "max_test_acc": 0.5}, sj_path)
    aedat, csv = recording
    outs = {}
    for name, path in (("ours", ckpt), ("sj", sj_path)):
        out = tmp_path / name
        args = ["predict", str(path), str(aedat), "--labels", str(csv), "--windows", "labels",
                "-T", str(T), "--out-dir", str(out), "--device", "cpu"]  # fmt: skip
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        outs[name] = json.loads((out / f"{aedat.stem}_predictions.json").read_text())
    assert outs["sj"]["source"] == "spikingjelly" and outs["sj"]["T"] == T
    assert [w["rates"] for w in outs["sj"]["windows"]] == [
        w["rates"] for w in outs["ours"]["windows"]
    ]


def test_predict_recordings_from_python_yields_what_it_wrote(
    trained: tuple[Path, Path], recording: tuple[Path, Path], tmp_path: Path
) -> None:
    """The Python front of `dvsgkit predict` (docs/predict.md): each prediction, in the
    checkpoint's frames, with the paths of the files written for it."""
    from dvsgkit.predict import predict_recordings

    _, ckpt = trained
    aedat, csv = recording
    options = {"out_dir": tmp_path, "window_us": 3_000_000, "hop_us": 1_000_000, "device": "cpu"}
    ((pred, paths),) = predict_recordings(ckpt, [aedat], [csv], **options)
    assert pred.frames == FrameSpec(T, "number") and pred.score["gestures_scored"] == 12
    assert sorted(paths) == ["csv", "json", "png"]
    assert all(path.parent == tmp_path and path.is_file() for path in paths.values())
    assert read_predictions_csv(paths["csv"])["predicted"].tolist() == pred.preds.tolist()
