"""Evaluate a checkpoint (dvsgkit's or SpikingJelly's): accuracy, per-class accuracy, confusion."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.config import DEFAULTS
from dvsgkit.constants import CLASS_NAMES, NUM_CLASSES
from dvsgkit.errors import OUT_DIR_FIX, InputError, storage_errors
from dvsgkit.frames import FrameSpec
from dvsgkit.fs import make_folder, write_text
from dvsgkit.run import checkpoint_file, recorded_root


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, k: int = NUM_CLASSES) -> np.ndarray:
    """Counts `[true, predicted]`, int64 [k, k]."""
    labels, preds = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
    if labels.shape != preds.shape:
        raise InputError(f"labels {labels.shape} and predictions {preds.shape} differ in shape")
    for name, values in (("labels", labels), ("predictions", preds)):
        if values.size and (values.min() < 0 or values.max() >= k):
            raise InputError(f"{name} must lie in 0..{k - 1}, got {values.min()}..{values.max()}")
    return np.bincount(labels * k + preds, minlength=k * k).reshape(k, k)


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Recall of each true class, float64 [k]; NaN for a class with no samples."""
    rows = matrix.sum(1)
    return np.divide(np.diag(matrix), rows, out=np.full(len(rows), np.nan), where=rows > 0)


@dataclass(frozen=True)
class Evaluation:
    """What `dvsgkit evaluate` reports for one checkpoint on one split."""

    checkpoint: str
    source: str  # "dvsgkit" or "spikingjelly"
    epoch: int | None
    split: str
    frames: FrameSpec  # what the samples were cut into
    channels: int
    loss: float  # mean MSE between firing rates and one-hot labels (the training loss)
    confusion: np.ndarray  # int64 [11, 11], rows true, columns predicted
    root: str = ""  # the dataset root whose frames were scored

    @property
    def samples(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(self.samples, 1))

    def to_dict(self) -> dict[str, Any]:
        per_class = per_class_accuracy(self.confusion)
        return {
            "checkpoint": self.checkpoint,
            "source": self.source,
            "epoch": self.epoch,
            "root": self.root,
            "split": self.split,
            **self.frames.to_dict(),
            "channels": self.channels,
            "samples": self.samples,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "class_names": list(CLASS_NAMES),
            "per_class_accuracy": {
                name: None if np.isnan(acc) else float(acc)
                for name, acc in zip(CLASS_NAMES, per_class, strict=True)
            },
            "per_class_samples": {
                name: int(n) for name, n in zip(CLASS_NAMES, self.confusion.sum(1), strict=True)
            },
            "confusion_matrix": self.confusion.tolist(),
            "confusion_matrix_axes": ["true", "predicted"],
        }

    def report(self) -> str:
        """Plain text: headline, per-class table, confusion matrix with class names."""
        epoch = "" if self.epoch is None else f", epoch {self.epoch}"
        lines = [
            f"{self.checkpoint} ({self.source}{epoch}) on {self.split}: {self.samples} samples, "
            f"{self.frames.describe()}, channels={self.channels}",
            f"accuracy {100 * self.accuracy:.2f} %  ({np.trace(self.confusion)}/{self.samples})"
            f"   loss {self.loss:.6f}",
            "",
            f"{'class':<32}{'samples':>8}{'accuracy':>11}",
        ]
        width = max(len(n) for n in CLASS_NAMES) + 4
        per_class = per_class_accuracy(self.confusion)
        for i, (name, acc) in enumerate(zip(CLASS_NAMES, per_class, strict=True)):
            shown = "-" if np.isnan(acc) else f"{100 * acc:.2f} %"
            lines.append(f"{i:>2} {name:<29}{self.confusion[i].sum():>8}{shown:>11}")
        lines += ["", "confusion matrix (rows: true class, columns: predicted class)"]
        lines.append(" " * width + "".join(f"{j:>5}" for j in range(NUM_CLASSES)))
        for i, name in enumerate(CLASS_NAMES):
            counts = "".join(f"{c:>5}" for c in self.confusion[i])
            lines.append(f"{i:>2} {name:<{width - 3}}{counts}")
        return "\n".join(lines)


def load_net(checkpoint: Path) -> tuple[Any, dict[str, Any]]:
    """A GestureNet in eval mode from a dvsgkit or SpikingJelly checkpoint, and what is known of
    its run: {"source", "epoch", "channels", "frames" (its FrameSpec), "T", "split_by", "root"};
    a SpikingJelly checkpoint records neither frames nor root (None)."""
    from dvsgkit.model import GestureNet, from_spikingjelly
    from dvsgkit.run.checkpoint import (
        check_checkpoint,
        is_dvsgkit_checkpoint,
        load_checkpoint,
        load_weights,
    )

    path = checkpoint_file(checkpoint)
    ckpt = load_checkpoint(path)
    if is_dvsgkit_checkpoint(ckpt):
        config = check_checkpoint(ckpt, path, resume=False)
        # Eval mode computes the same function in every mode; layer-by-layer is the faster one.
        net = GestureNet(config.channels, mode="layer", backend="torch", neuron=config.neuron,
                         size=config.size)  # fmt: skip
        load_weights(net, ckpt["net"], path)
        spec, root, source = config.frame_spec, config.root, "dvsgkit"
    else:
        if not all(isinstance(k, str) for k in ckpt["net"]):
            raise InputError(f"{path}: 'net' has keys that are not names")
        try:
            net = from_spikingjelly(ckpt)
        except ValueError as exc:  # its message says what is wrong, not in which file
            raise InputError(f"{path}: {exc}") from exc
        spec, root, source = None, None, "spikingjelly"
    meta = {"source": source, "epoch": ckpt.get("epoch"), "channels": net.channels}
    meta |= {"frames": spec, "T": spec and spec.T, "split_by": spec and spec.split_by}
    return net.eval(), meta | {"root": root}


def predict(net: Any, loader: Any, device: Any, *, amp: bool = False) -> tuple[Any, Any, float]:
    """Run `net` over `loader`: (labels int64 [N], predictions int64 [N], mean loss), scored as
    training scores its test epochs (`objective.score_batch`)."""
    import torch

    from dvsgkit.objective import new_sums, score_batches

    labels, preds, sums = [], [], new_sums(device)
    with torch.inference_mode():
        for _, pred, target in score_batches(net, loader, sums, amp):
            labels.append(target)
            preds.append(pred)
    labels_all, preds_all = torch.cat(labels).cpu().numpy(), torch.cat(preds).cpu().numpy()
    return labels_all, preds_all, float(sums[0]) / max(len(labels_all), 1)


def evaluate(
    checkpoint: Path,
    *,
    root: Path | None = None,
    T: int | None = None,
    split_by: str | None = None,
    split: str = "test",
    batch_size: int = DEFAULTS.batch_size,
    device: str = "cpu",
    workers: int = 0,
    progress: bool = True,
    **frame_options: object,
) -> Evaluation:
    """Evaluate `checkpoint` on ROOT's frames (built if missing). ROOT and the frames default to
    the checkpoint's run: the root it trained on, its FrameSpec, which T, split_by and
    `frame_options` (FrameSpec's duration_us, bin_us, size, denoise_us) override
    (`FrameSpec.override`); a SpikingJelly checkpoint records neither, so they default to
    training's (data, 16, number)."""
    from dvsgkit.data import make_loader
    from dvsgkit.device import parse_device
    from dvsgkit.framestore.build import build_frame_store
    from dvsgkit.model.inference import for_inference

    checkpoint = checkpoint_file(checkpoint)  # a run directory: its latest, named so in outputs
    net, meta = load_net(checkpoint)
    frames = (meta["frames"] or DEFAULTS.frame_spec).override(T=T, split_by=split_by,
                                                              **frame_options)  # fmt: skip
    if frames.size != net.size:
        raise InputError(
            f"--size {frames.size}: {checkpoint}'s network takes {net.size} x {net.size} frames "
            f"(it was trained on them); drop --size, or give --size {net.size}"
        )
    if root is None:
        root = recorded_root(meta["root"], checkpoint) if meta["root"] else DEFAULTS.root
    dev = parse_device(device)
    store = build_frame_store(Path(root), frames, workers=max(workers, 1), progress=progress)
    loader = make_loader(store, split, batch_size, shuffle=False, drop_last=False, device=dev,
                         workers=workers)  # fmt: skip
    labels, preds, loss = predict(for_inference(net, dev), loader, dev)
    confusion = confusion_matrix(labels, preds)
    return Evaluation(str(checkpoint), meta["source"], meta["epoch"], split, frames,
                      meta["channels"], loss, confusion, str(root))  # fmt: skip


def write_outputs(result: Evaluation, out_dir: Path) -> dict[str, Path]:
    """`<stem>_<split>_eval.json`, `_eval.txt` and `_confusion.png` in out_dir, each written whole
    under a temp name first; a folder or file that cannot be written (under a file, read-only, a
    full disk) is a StorageError naming it."""
    from dvsgkit.plots import plot_confusion

    make_folder(Path(out_dir), OUT_DIR_FIX)
    stem = f"{Path(result.checkpoint).stem}_{result.split}"
    names = {"json": "eval.json", "text": "eval.txt", "png": "confusion.png"}
    paths = {kind: Path(out_dir) / f"{stem}_{name}" for kind, name in names.items()}
    title = f"{Path(result.checkpoint).name} on {result.split}: {100 * result.accuracy:.2f} %"
    with storage_errors(None, "write", OUT_DIR_FIX):  # None: the file the error names
        write_text(paths["json"], json.dumps(result.to_dict(), indent=2) + "\n")
        write_text(paths["text"], result.report() + "\n")
        plot_confusion(result.confusion, CLASS_NAMES, paths["png"], title=title)
    return paths
