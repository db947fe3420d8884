"""What `dvsgkit predict` writes: per-window CSV and JSON, and a timeline PNG."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.constants import CLASS_KEYS, CLASS_NAMES, NUM_CLASSES
from dvsgkit.errors import OUT_DIR_FIX, InputError, storage_errors
from dvsgkit.fs import atomic_file, make_folder, probe_writable
from dvsgkit.predict.windows import Prediction

RATE_COLUMNS = tuple(f"rate_{key}" for key in CLASS_KEYS)  # rate_hand_clapping, ...
CSV_COLUMNS = ("start_us", "end_us", "start_s", "events", "predicted", "name", "true_label",
               *RATE_COLUMNS)  # fmt: skip
SUFFIXES = {"csv": "_predictions.csv", "json": "_predictions.json", "png": "_timeline.png"}
DEFAULT_OUT_DIR = Path("predictions")  # in the current directory, never inside a dataset


def output_paths(
    recording: str | os.PathLike[str], out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR
) -> dict[str, Path]:
    """`<stem>_predictions.csv`, `<stem>_predictions.json` and `<stem>_timeline.png` in
    `out_dir`."""
    recording = Path(recording)
    return {kind: Path(out_dir) / f"{recording.stem}{suffix}" for kind, suffix in SUFFIXES.items()}


def plan_outputs(
    recordings: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR
) -> list[dict[str, Path]]:
    """`output_paths` of each recording, checked before any recording runs: InputError when two
    would write the same files; `out_dir` is created, and StorageError names it (or the first
    file) when files cannot be made there (read-only, no permission, a file in the way)."""
    plans = [output_paths(recording, out_dir) for recording in recordings]
    if len({plan["csv"] for plan in plans}) != len(plans):
        raise InputError(
            f"two RECORDINGs share a file name and would write the same outputs in {out_dir}; "
            "classify them in separate runs"
        )
    make_folder(Path(out_dir), OUT_DIR_FIX)
    if plans:
        probe_writable(plans[0]["csv"], OUT_DIR_FIX)
    return plans


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


def window_fields(start: int, end: int, events: int, rates: np.ndarray) -> dict[str, Any]:
    """One window as the JSON holds it (and `--live` writes it): times in µs, event count, the
    predicted class (the highest of the 11 firing `rates`) and its name, the rates."""
    predicted = int(np.argmax(rates))
    return {
        "start_us": int(start),
        "end_us": int(end),
        "events": int(events),
        "predicted": predicted,
        "name": CLASS_NAMES[predicted],
        "rates": [float(f"{r:.7g}") for r in rates.tolist()],  # float32's digits
    }


def to_dict(pred: Prediction) -> dict[str, Any]:
    """The JSON document: the recipe, the windows, and the score (docs/predict.md)."""
    truth = pred.window_labels()
    windows = [
        {
            **window_fields(pred.starts[k], pred.ends[k], pred.counts[k], pred.rates[k]),
            "true_label": None if pred.gestures is None or truth[k] < 0 else int(truth[k]),
        }
        for k in range(len(pred.starts))
    ]
    return {
        "recording": pred.recording,
        "checkpoint": pred.checkpoint,
        "source": pred.meta.get("source"),
        "epoch": pred.meta.get("epoch"),
        **pred.frames.to_dict(),  # T, split_by
        "channels": pred.meta.get("channels"),
        "windows_mode": pred.mode,
        "window_us": pred.window_us,
        "hop_us": pred.hop_us,
        "first_event_us": pred.first_t,
        "sensor": list(pred.sensor),
        "roi": [pred.roi.x, pred.roi.y, pred.roi.w, pred.roi.h],
        "outside_roi": pred.outside_roi,
        "labels": pred.labels_path,
        "class_names": list(CLASS_NAMES),
        "windows": windows,
        "score": pred.score,
    }


def summary(pred: Prediction) -> str:
    """One line for the terminal: windows (and how many hold fewer events than T), and with
    labels how many windows and gestures are right out of how many were scored."""
    line = f"{pred.recording}: {len(pred.starts)} windows"
    if pred.few_events:
        line += f" ({pred.few_events} with fewer than T={pred.frames.T} events)"
    if pred.outside_roi:
        width, height = pred.sensor
        line += (
            f", {pred.outside_roi:,} events outside the region {pred.roi} of the "
            f"{width}x{height} sensor (dropped)"
        )
    s = pred.score
    if s is not None:
        if s["window_accuracy"] is not None:
            right = round(s["window_accuracy"] * s["windows_scored"])
            line += (
                f", window accuracy {100 * s['window_accuracy']:.1f} % "
                f"({right} of {s['windows_scored']} right)"
            )
        if s["gesture_accuracy"] is not None:
            right = sum(bool(g["correct"]) for g in s["gestures"])
            line += (
                f", gesture accuracy {100 * s['gesture_accuracy']:.1f} % "
                f"({right} of {s['gestures_scored']} right"
            )
            unscored = len(s["gestures"]) - s["gestures_scored"]
            line += f"; {unscored} shorter than a window, not scored)" if unscored else ")"
    return line


def timeline_figure(pred: Prediction) -> Any:
    """Predicted class over time (one bar per window, centred on it, one hop wide), and the
    labelled gestures as bands beneath, named; seconds from the recording's first event."""
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
            bottom.text((a + b) / 2, 0.5, CLASS_NAMES[c].replace(" ", "\n"), ha="center",
                        va="center", fontsize=6, linespacing=0.9)  # fmt: skip
    else:
        bottom.text(0.5, 0.5, "no labels given", ha="center", va="center",
                    transform=bottom.transAxes, fontsize=8, color="grey")  # fmt: skip
    bottom.set_xlabel("time from the first event (s)")
    return fig


def _class_color(c: int) -> tuple[float, float, float, float]:
    from matplotlib import colormaps

    return colormaps["tab20"](2 * c % 20 + (c >= 10))


def write_outputs(
    pred: Prediction, out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR
) -> dict[str, Path]:
    """Write the CSV, the JSON and the timeline PNG, all three under temporary names first and
    renamed once all are whole (a full disk leaves none of them); returns their paths. A write
    that fails raises StorageError naming the file and the cause."""
    paths = output_paths(pred.recording, out_dir)
    make_folder(paths["csv"].parent, OUT_DIR_FIX)
    with contextlib.ExitStack() as stack:  # renamed when the block ends without an error
        for kind, path in paths.items():
            tmp = stack.enter_context(atomic_file(path))
            with storage_errors(path, "write", OUT_DIR_FIX):
                if kind == "png":
                    timeline_figure(pred).savefig(tmp, format="png", dpi=100)
                elif kind == "csv":
                    tmp.write_text(to_csv(pred), encoding="utf-8")
                else:
                    tmp.write_text(json.dumps(to_dict(pred), indent=1) + "\n", encoding="utf-8")
    return paths
