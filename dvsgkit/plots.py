"""PNG figures: loss/accuracy curves of a run and a confusion matrix (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.constants import NUM_CLASSES
from dvsgkit.errors import InputError
from dvsgkit.fs import atomic_file
from dvsgkit.run import CURVES_PNG, read_metrics

CURVE_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc")  # what plot_curves draws


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """RUN_DIR/metrics.jsonl -> RUN_DIR/curves.png (or `out`)."""
    run_dir = Path(run_dir)
    out = run_dir / CURVES_PNG if out is None else Path(out)
    return plot_curves(read_metrics(run_dir, ("epoch", *CURVE_KEYS)), out, title=run_dir.name)


def _save(fig: Any, path: Path) -> Path:
    """Write the PNG under a temp name and rename, so a half-written image never looks complete."""
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def plot_curves(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Train/test loss and accuracy against epoch, two panels side by side (classify_dvsg's four
    TensorBoard scalars), with the best test accuracy marked. `records` are metrics.jsonl
    lines: each needs epoch, train_loss, train_acc, test_loss, test_acc. A PLIF run's records
    also hold `tau` ({layer: learned time constant}), drawn in a third panel."""
    from matplotlib.figure import Figure  # Figure without pyplot: no GUI backend is touched

    if not records:
        raise InputError(f"no epochs to plot for {path}; train at least one epoch first")
    epoch = np.array([r["epoch"] for r in records])
    with_tau = any("tau" in r for r in records)
    fig = Figure(figsize=(16 if with_tau else 11, 4.2), layout="constrained")
    loss_ax, acc_ax, *tau_ax = fig.subplots(1, 3 if with_tau else 2)
    if tau_ax:
        _plot_taus(tau_ax[0], records)
    for split, style in (("train", "-"), ("test", "--")):
        loss_ax.plot(epoch, [r[f"{split}_loss"] for r in records], style, marker=".", label=split)
        acc = np.array([r[f"{split}_acc"] for r in records]) * 100
        acc_ax.plot(epoch, acc, style, marker=".", label=split)
    test_acc = np.array([r["test_acc"] for r in records]) * 100
    best = int(np.argmax(test_acc))
    acc_ax.annotate(
        f"max test {test_acc[best]:.2f} % (epoch {epoch[best]})",
        (epoch[best], test_acc[best]),
        xytext=(0, -40),
        textcoords="offset points",
        ha="center",
        arrowprops={"arrowstyle": "->"},
        bbox={"boxstyle": "round", "fc": "white", "alpha": 0.85},
    )
    chance = f"chance (1/{NUM_CLASSES})"
    acc_ax.axhline(100 / NUM_CLASSES, color="grey", lw=0.8, ls=":", label=chance)
    loss_ax.set(xlabel="epoch", ylabel="MSE loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy", ylim=(0, 100))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _plot_taus(ax: Any, records: Sequence[dict[str, Any]]) -> None:
    """One line per spiking layer: its learned membrane time constant against epoch."""
    layers = list(dict.fromkeys(name for r in records for name in r.get("tau", {})))
    for name in layers:
        points = [(r["epoch"], r["tau"][name]) for r in records if name in r.get("tau", {})]
        ax.plot(*zip(*points, strict=True), marker=".", label=name)
    ax.set(xlabel="epoch", ylabel="tau = 1 + exp(-w)", title="PLIF time constants")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_confusion(
    matrix: np.ndarray, class_names: Sequence[str], path: Path, title: str = ""
) -> Path:
    """A confusion matrix `[true, predicted]` of counts, shaded by row share, counts written in."""
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    k = len(class_names)
    if matrix.shape != (k, k):
        raise InputError(f"confusion matrix must be [{k}, {k}] for {k} classes, got {matrix.shape}")
    rows = matrix.sum(1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    fig = Figure(figsize=(8.5, 7.5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)
