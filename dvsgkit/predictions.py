"""What `dvsgkit predict` writes: per-window CSV and JSON, and a timeline PNG."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.constants import CLASS_NAMES, NUM_CLASSES
from dvsgkit.io.atomic import atomic_path, write_text_atomic
from dvsgkit.predict import Prediction

RATE_COLUMNS = tuple(
    "rate_" + name.replace(" ", "_").replace("-", "_") for name in CLASS_NAMES
)  # rate_hand_clapping, ..., rate_other_gestures
CSV_COLUMNS = ("start_us", "end_us", "start_s", "events", "predicted", "name", "true_label",
               *RATE_COLUMNS)  # fmt: skip
SUFFIXES = {"csv": "_predictions.csv", "json": "_predictions.json", "png": "_timeline.png"}


def output_paths(
    recording: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None
) -> dict[str, Path]:
    """`<stem>_predictions.csv`, `<stem>_predictions.json` and `<stem>_timeline.png`, beside
    the recording or in `out_dir`."""
    recording = Path(recording)
    folder = recording.parent if out_dir is None else Path(out_dir)
    return {kind: folder / f"{recording.stem}{suffix}" for kind, suffix in SUFFIXES.items()}


def to_csv(pred: Prediction) -> str:
    """One row per window: times (µs on the recording's clock; start_s from its first event),
    event count, predicted class and name, the true label (-1 outside every labelled gesture,
    empty without labels) and the 11 firing rates."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    truth = pred.window_labels()
    for k, c in enumerate(pred.preds.tolist()):
        writer.writerow([
            int(pred.starts[k]),
            int(pred.ends[k]),
            f"{(pred.starts[k] - pred.first_t) / 1e6:.6f}",
            int(pred.counts[k]),
            c,
            CLASS_NAMES[c],
            "" if pred.gestures is None else int(truth[k]),
            *(f"{r:.6g}" for r in pred.rates[k].tolist()),
        ])  # fmt: skip
    return buf.getvalue()


def to_dict(pred: Prediction) -> dict[str, Any]:
    truth = pred.window_labels()
    windows = [
        {
            "start_us": int(pred.starts[k]),
            "end_us": int(pred.ends[k]),
            "events": int(pred.counts[k]),
            "predicted": c,
            "name": CLASS_NAMES[c],
            "true_label": None if pred.gestures is None or truth[k] < 0 else int(truth[k]),
            "rates": [float(f"{r:.7g}") for r in pred.rates[k].tolist()],  # float32 digits
        }
        for k, c in enumerate(pred.preds.tolist())
    ]
    return {
        "recording": pred.recording,
        "checkpoint": pred.checkpoint,
        **{key: pred.meta.get(key) for key in ("source", "epoch", "T", "split_by", "channels")},
        "windows_mode": pred.mode,
        "window_us": pred.window_us,
        "hop_us": pred.hop_us,
        "first_event_us": pred.first_t,
        "late_events": pred.late_events,
        "labels": pred.labels_path,
        "class_names": list(CLASS_NAMES),
        "windows": windows,
        "score": pred.score,
    }


def summary(pred: Prediction) -> str:
    """One line for the terminal."""
    line = f"{pred.recording}: {len(pred.starts)} windows"
    s = pred.score
    if s is not None:
        if s["window_accuracy"] is not None:
            line += f", window accuracy {100 * s['window_accuracy']:.1f} % ({s['windows_scored']})"
        if s["gesture_accuracy"] is not None:
            line += (
                f", gesture accuracy {100 * s['gesture_accuracy']:.1f} % "
                f"({s['gestures_scored']} of {len(s['gestures'])} gestures)"
            )
    return line


def plot_timeline(pred: Prediction, path: Path) -> Path:
    """Predicted class over time (one bar per window, centred on it, one hop wide), and the
    labelled gestures as bands beneath; seconds from the recording's first event."""
    from matplotlib.figure import Figure

    colors = [_class_color(c) for c in range(NUM_CLASSES)]
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[4, 1])
    t0 = pred.first_t
    width = (pred.hop_us if pred.mode == "sliding" else None) or 0
    truth = pred.window_labels()
    for k, c in enumerate(pred.preds.tolist()):
        if width:
            mid = (pred.starts[k] + pred.ends[k]) / 2
            a, b = mid - width / 2, mid + width / 2
        else:
            a, b = pred.starts[k], pred.ends[k]
        wrong = pred.gestures is not None and truth[k] >= 0 and truth[k] != c
        top.barh(c, (b - a) / 1e6, left=(a - t0) / 1e6, height=0.7, color=colors[c],
                 edgecolor="black" if wrong else "none", linewidth=0.6)  # fmt: skip
    top.set_yticks(range(NUM_CLASSES), CLASS_NAMES, fontsize=8)
    top.set_ylim(NUM_CLASSES - 0.5, -0.5)
    top.grid(axis="x", alpha=0.3)
    top.set_ylabel("predicted")
    title = f"{Path(pred.recording).name}: {len(pred.starts)} windows"
    if pred.mode == "sliding":
        title += f" of {pred.window_us / 1e6:g} s every {pred.hop_us / 1e6:g} s"
    if pred.score is not None and pred.score["window_accuracy"] is not None:
        title += f"; window accuracy {100 * pred.score['window_accuracy']:.1f} %"
        if pred.score["gesture_accuracy"] is not None:
            title += f", gesture accuracy {100 * pred.score['gesture_accuracy']:.1f} %"
    top.set_title(title, fontsize=9)
    bottom.set_yticks([])
    bottom.set_ylabel("labels", fontsize=8)
    if pred.gestures is not None:
        for g in pred.gestures:
            a, b, c = (g["start"] - t0) / 1e6, (g["end"] - t0) / 1e6, int(g["label"])
            bottom.axvspan(a, b, color=colors[c], alpha=0.85)
            bottom.text((a + b) / 2, 0.5, str(c), ha="center", va="center", fontsize=8)
    else:
        bottom.text(0.5, 0.5, "no labels given", ha="center", va="center",
                    transform=bottom.transAxes, fontsize=8, color="grey")  # fmt: skip
    bottom.set_xlabel("time from the first event (s)")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def _class_color(c: int) -> tuple[float, float, float, float]:
    from matplotlib import colormaps

    return colormaps["tab20"](2 * c % 20 + (c >= 10))


def write_outputs(
    pred: Prediction, out_dir: str | os.PathLike[str] | None = None
) -> dict[str, Path]:
    """Write the CSV, the JSON and the timeline PNG (each whole under a temp name, then
    renamed); returns their paths."""
    paths = output_paths(pred.recording, out_dir)
    paths["csv"].parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(paths["csv"], to_csv(pred))
    write_text_atomic(paths["json"], json.dumps(to_dict(pred), indent=1) + "\n")
    plot_timeline(pred, paths["png"])
    return paths


def read_predictions_csv(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A predictions CSV back as columns (numbers as arrays; name as strings)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, np.ndarray] = {}
    for column in CSV_COLUMNS:
        values = [row[column] for row in rows]
        if column == "name":
            out[column] = np.array(values)
        elif column in ("start_s", *RATE_COLUMNS):
            out[column] = np.array(values, dtype=np.float64)
        else:
            out[column] = np.array([int(v) if v else -1 for v in values], dtype=np.int64)
    return out
