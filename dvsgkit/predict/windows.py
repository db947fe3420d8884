"""Classify the gestures of a recording: windows of its events -> frames (a FrameSpec) -> a
trained network -> a Prediction, scored against a labels CSV when there is one."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.constants import CLASS_NAMES, NUM_CLASSES
from dvsgkit.errors import InputError, NotFound
from dvsgkit.frames import FrameSpec, integrate_samples, pad_samples
from dvsgkit.io.labels import read_labels
from dvsgkit.io.recordings import (
    DVS128,
    RecordingError,
    check_recording,
    iter_recording,
    recording_sensor,
)
from dvsgkit.io.roi import Roi, check_roi, default_roi, in_roi
from dvsgkit.predict.cutting import sliding_windows
from dvsgkit.run import checkpoint_file
from dvsgkit.samples import cut_chunks

WINDOW_MODES = ("sliding", "labels")
DEFAULT_WINDOW_US = 1_500_000
DEFAULT_HOP_US = 250_000
DEFAULT_BATCH = {"cpu": 4, "cuda": 16}  # windows per forward pass (bench/predict.py)


def default_batch(device: Any) -> int:
    """DEFAULT_BATCH of a device ("cpu", "cuda:1", a torch.device): a GPU's for any but the
    CPU."""
    return DEFAULT_BATCH.get(str(device).split(":")[0], DEFAULT_BATCH["cuda"])


@dataclass
class Prediction:
    """The network's answer for every window of one recording. Times are int64 µs on the
    recording's clock (the labels CSV's); `first_t` is its earliest event's timestamp."""

    recording: str
    checkpoint: str
    meta: dict[str, Any]  # load_net's: source, epoch, channels, ...
    frames: FrameSpec  # what each window's events became
    mode: str  # "sliding" or "labels"
    window_us: int | None  # sliding mode only
    hop_us: int | None
    first_t: int
    starts: np.ndarray  # int64 [K]
    ends: np.ndarray  # int64 [K]
    counts: np.ndarray  # int64 [K] events per window
    rates: np.ndarray  # float32 [K, 11] firing rate of each class, averaged over T
    sensor: tuple[int, int] = DVS128  # (width, height) of the recording's sensor
    roi: Roi = default_roi(DVS128)  # the region of it mapped onto 128 x 128 (`io.roi`)
    outside_roi: int = 0  # events outside the region, dropped
    gestures: np.ndarray | None = None  # WINDOW_DTYPE [G], the labels CSV's rows, when given
    labels_path: str | None = None
    score: dict[str, Any] | None = None

    @property
    def preds(self) -> np.ndarray:
        return self.rates.argmax(1) if len(self.rates) else np.empty(0, np.int64)

    @property
    def few_events(self) -> int:
        """Windows with fewer events than T frames: all in the last frame (none: empty frames),
        as the frame store integrates such samples."""
        return 0 if self.frames.ragged else int((self.counts < self.frames.T).sum())

    def window_labels(self) -> np.ndarray:
        """int64 [K]: the label of the first labelled gesture (in file order) that holds each
        window whole, or -1. In labels mode window k is gesture k."""
        out = np.full(len(self.starts), -1, np.int64)
        if self.gestures is None:
            return out
        if self.mode == "labels":
            return self.gestures["label"].astype(np.int64)
        for g in self.gestures[::-1]:  # the first row wins: written last
            inside = (self.starts >= g["start"]) & (self.ends <= g["end"])
            out[inside] = g["label"]
        return out


def checkpoint_frames(
    meta: dict[str, Any], T: int | None = None, split_by: str | None = None
) -> FrameSpec:
    """The frames a checkpoint was trained on (`meta` from `load_checkpoint_net`; a SpikingJelly
    checkpoint records none: FrameSpec's defaults, 16 by number), every option of them, with
    -T / --split-by overriding its cut (`FrameSpec.override`)."""
    recorded = meta.get("frames") or FrameSpec.from_dict({k: v for k, v in meta.items() if v})
    if recorded.mode == "custom":
        raise InputError(
            f"the checkpoint was trained on frames of the custom integrator "
            f"{recorded.integrator}, which dvsgkit cannot apply to windows; train on frames of "
            "dvsgkit frames' options to predict with 'dvsgkit predict'"
        )
    return recorded.override(T=T, split_by=split_by)


def load_checkpoint_net(checkpoint: Path) -> tuple[Any, dict[str, Any]]:
    """`evaluate.load_net`, with every error naming the checkpoint file."""
    from dvsgkit.evaluate import load_net

    checkpoint = checkpoint_file(checkpoint)
    try:
        return load_net(checkpoint)
    except ValueError as exc:
        if str(checkpoint) in str(exc):
            raise
        raise InputError(f"{checkpoint}: {exc}") from exc


def read_gestures(labels: str | os.PathLike[str]) -> np.ndarray:
    """A --labels CSV as WINDOW_DTYPE rows (`read_labels`), a missing file named as such."""
    if not Path(labels).is_file():
        raise NotFound(f"--labels {labels} not found (no such file)")
    return read_labels(labels)


def check_inputs(
    recordings: Iterable[str | os.PathLike[str]], labels: Iterable[str | os.PathLike[str]] = ()
) -> None:
    """Refuse, before any recording runs, a recording that is missing or of an unknown type,
    and a --labels file that is missing or has a bad row."""
    for recording in recordings:
        check_recording(Path(recording))
    for path in labels:
        read_gestures(path)


def classify(
    net: Any,
    windows: Iterable[tuple[int, int, np.ndarray]],
    frames: FrameSpec,
    *,
    device: Any = "cpu",
    batch_size: int = DEFAULT_BATCH["cpu"],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Integrate each window's events into `frames` exactly as the frame store does
    (`frames.integrate_samples`; a window with fewer than T events has them all in its last
    frame, one with none T empty frames; windows of a ragged spec padded to the batch's
    longest, with a mask) and run `net` on batches of them: (starts int64 [K], ends int64 [K],
    event counts int64 [K], firing rates float32 [K, 11])."""
    import torch

    from dvsgkit.data import padded_sequence_mask

    starts, ends, counts, rates = [], [], [], []
    batch: list[np.ndarray] = []

    def run() -> None:
        offsets = np.cumsum([0] + [len(e) for e in batch])
        events = batch[0] if len(batch) == 1 else np.concatenate(batch)  # a window: no copy
        pixels, frame_offsets = integrate_samples(events, offsets, frames)
        mask = None
        if frames.ragged:  # padded to the longest window, masked (SpikingJelly's padding)
            pixels, lengths = pad_samples(pixels, frame_offsets)  # [B, T, 2, H, W], [B]
            mask = padded_sequence_mask(torch.from_numpy(lengths).to(device))
        else:
            pixels = pixels.reshape(len(batch), frames.T, *pixels.shape[1:])  # [B, T, 2, H, W]
        x = torch.from_numpy(pixels.astype(np.float32)).to(device)
        with torch.inference_mode():
            rates.append((net(x) if mask is None else net(x, mask)).float().cpu().numpy())
        batch.clear()

    for start, end, events in windows:
        starts.append(start)
        ends.append(end)
        counts.append(len(events))
        batch.append(events)
        if len(batch) == batch_size:
            run()
    if batch:
        run()
    return (
        np.array(starts, np.int64),
        np.array(ends, np.int64),
        np.array(counts, np.int64),
        np.concatenate(rates) if rates else np.empty((0, NUM_CLASSES), np.float32),
    )


def predict_recording(
    net: Any,
    meta: dict[str, Any],
    recording: str | os.PathLike[str],
    *,
    checkpoint: str = "",
    labels: str | os.PathLike[str] | None = None,
    mode: str = "sliding",
    window_us: int = DEFAULT_WINDOW_US,
    hop_us: int = DEFAULT_HOP_US,
    frames: FrameSpec | None = None,
    device: Any = "cpu",
    batch_size: int | None = None,
    roi: Roi | None = None,
) -> Prediction:
    """Classify one recording with `net` and its `meta` (from `load_checkpoint_net`; run the net
    through `dvsgkit.model.inference.for_inference` first). Mode "sliding": windows of
    `window_us` every `hop_us` from the first event; mode "labels": exactly the windows of the
    `labels` CSV, cut as the event cache cuts its samples. `frames` defaults to the
    checkpoint's (`checkpoint_frames`), `batch_size` to DEFAULT_BATCH of the device type, `roi`
    (the region of the recording's sensor mapped onto 128 x 128) to the largest centred square.
    With `labels`, the prediction is also scored (see `score`)."""
    if mode not in WINDOW_MODES:
        raise InputError(f"mode must be one of {', '.join(WINDOW_MODES)}; got {mode!r}")
    if mode == "labels" and labels is None:
        raise InputError(f"{recording}: --windows labels needs a labels CSV (--labels)")
    path = Path(recording)
    if batch_size is None:
        batch_size = default_batch(device)
    frames = frames or checkpoint_frames(meta)
    gestures = read_gestures(labels) if labels is not None else None
    sensor = recording_sensor(path)
    roi = check_roi(roi or default_roi(sensor), sensor, path)
    stats: dict[str, int] = {"outside_roi": 0}
    if mode == "labels":  # cut as the event cache cuts: whatever the order of the timestamps
        chunks = _noting_first(in_roi(iter_recording(path), roi, stats), stats)
        windows: Iterable[tuple[int, int, np.ndarray]] = (
            (int(g["start"]), int(g["end"]), s)
            for g, s in zip(gestures, cut_chunks(chunks, gestures), strict=True)
        )
    else:  # streamed by time: events out of order would be lost, so they are refused
        chunks = in_roi(iter_recording(path, time_order=True), roi, stats)
        windows = sliding_windows(chunks, window_us, hop_us, stats, where=str(path))
    starts, ends, counts, rates = classify(
        net, windows, frames, device=device, batch_size=batch_size
    )
    if "first_t" not in stats:
        raise RecordingError(
            f"{path}: none of its {stats['outside_roi']:,} events lies inside the region "
            f"{roi} of its {sensor[0]}x{sensor[1]} sensor; give another --roi X,Y,W,H"
        )
    if len(starts) == 0:
        raise RecordingError(
            f"{path}: the recording spans {stats.get('span_us', 0) / 1e6:g} s, shorter than one "
            f"{window_us / 1e6:g} s window; give a shorter --window"
        )
    result = Prediction(
        recording=str(path),
        checkpoint=str(checkpoint),
        meta=meta,
        frames=frames,
        mode=mode,
        window_us=window_us if mode == "sliding" else None,
        hop_us=hop_us if mode == "sliding" else None,
        first_t=stats["first_t"],
        starts=starts,
        ends=ends,
        counts=counts,
        rates=rates,
        sensor=sensor,
        roi=roi,
        outside_roi=stats["outside_roi"],
        gestures=gestures,
        labels_path=None if labels is None else str(labels),
    )
    if gestures is not None:
        result.score = score(result)
    return result


def _noting_first(chunks: Iterable[np.ndarray], stats: dict[str, int]) -> Iterator[np.ndarray]:
    """The chunks, with stats["first_t"] the earliest timestamp among them."""
    for chunk in chunks:
        earliest = int(chunk["t"].min())
        stats["first_t"] = min(stats.get("first_t", earliest), earliest)
        yield chunk


def score(pred: Prediction) -> dict[str, Any]:
    """Accuracy of the windows that lie whole inside a labelled gesture, and of each gesture by
    the majority vote of its windows (ties go to the lower class index; a gesture shorter than
    the window gets no vote and is not scored)."""
    if pred.gestures is None:
        raise InputError("no labels to score against")
    truth, preds = pred.window_labels(), pred.preds
    scored = truth >= 0
    gestures = []
    for i, g in enumerate(pred.gestures):
        if pred.mode == "labels":
            inside = np.arange(len(preds)) == i
        else:
            inside = (pred.starts >= g["start"]) & (pred.ends <= g["end"])
        votes = np.bincount(preds[inside], minlength=NUM_CLASSES)
        vote = int(votes.argmax()) if inside.any() else None
        gestures.append({
            "row": int(g["row"]),
            "label": int(g["label"]),
            "name": CLASS_NAMES[int(g["label"])],
            "start_us": int(g["start"]),
            "end_us": int(g["end"]),
            "windows": int(inside.sum()),
            "vote": vote,
            "vote_name": None if vote is None else CLASS_NAMES[vote],
            "correct": None if vote is None else vote == int(g["label"]),
        })  # fmt: skip
    voted = [g for g in gestures if g["vote"] is not None]
    return {
        "windows_scored": int(scored.sum()),
        "window_accuracy": float((preds[scored] == truth[scored]).mean()) if scored.any() else None,
        "gestures_scored": len(voted),
        "gesture_accuracy": (sum(g["correct"] for g in voted) / len(voted) if voted else None),
        "gestures": gestures,
    }
