"""Classify the gestures of a recording: windows of its events -> frames (a FrameSpec) -> a
trained network -> a Prediction, scored against a labels CSV when there is one."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.constants import CLASS_NAMES, EVENT_DTYPE, NUM_CLASSES
from dvsgkit.errors import InputError, NotFound
from dvsgkit.frames import FrameSpec, integrate_samples, pad_samples
from dvsgkit.io.labels import read_labels
from dvsgkit.io.recordings import RecordingError, check_recording, iter_recording
from dvsgkit.run import checkpoint_file
from dvsgkit.samples import cut_chunks

WINDOW_MODES = ("sliding", "labels")
DEFAULT_WINDOW_US = 1_500_000
DEFAULT_HOP_US = 250_000
DEFAULT_BATCH = {"cpu": 4, "cuda": 16}  # windows per forward pass (bench/predict.py)
# A recording whose timestamps span more windows than this is refused before it runs for days:
# 69 hours at the default hop (a corrupt timestamp far ahead would otherwise do it).
MAX_WINDOWS = 1_000_000


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


def sliding_windows(
    chunks: Iterable[np.ndarray],
    window_us: int,
    hop_us: int,
    stats: dict[str, int],
    where: str = "",
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Windows [first + k*hop, first + k*hop + window) over a recording given as consecutive
    EVENT_DTYPE chunks in time order (as `iter_recording(path, time_order=True)` checks), each
    with its events (start <= t < end), as (start, end, events). A window is cut once an event
    at or after its end has been read (or the recording ends: the last window is the last
    whole one), so only one window's events and one chunk are held. Windows in a quiet stretch
    may hold few events, or none. stats["first_t"] is set to the first event's time and
    stats["span_us"] to the time read so far. A recording spanning more than MAX_WINDOWS
    windows raises RecordingError naming `where` (the file) before they run."""
    buf = np.empty(0, EVENT_DTYPE)
    buf_t = np.empty(0, np.int64)  # buf["t"], contiguous: binary search on a strided view copies
    first: int | None = None
    k, t_max, seen = 0, -1, 0
    chunks = iter(chunks)
    done = False
    while not done:
        chunk = next(chunks, None)
        if chunk is None:
            done, limit = True, t_max + 1  # the recording's end: windows ending by it are whole
        else:
            t = np.ascontiguousarray(chunk["t"])
            if first is None:
                first = stats["first_t"] = int(t[0])
            t_max = int(t[-1])
            # An event here makes window MAX_WINDOWS + 1 whole, by the recording's end at last.
            bound = first + MAX_WINDOWS * hop_us + window_us - 1
            if t_max >= bound:
                i = int(np.argmax(t >= bound))
                raise RecordingError(
                    f"{where}: event {seen + i} (t {int(t[i])} µs) lies "
                    f"{(int(t[i]) - first) / 1e6:g} s after the first event: more than "
                    f"{MAX_WINDOWS:,} windows every {hop_us / 1e6:g} s; check that timestamp, "
                    "or give a longer --hop"
                )
            seen += len(t)
            buf, buf_t = np.concatenate([buf, chunk]), np.concatenate([buf_t, t])
            limit = t_max  # an event at t_max has been read: windows ending by it are whole
        if first is None:
            return
        stats["span_us"] = t_max + 1 - first
        while first + k * hop_us + window_us <= limit:
            start = first + k * hop_us
            end = start + window_us
            lo, hi = np.searchsorted(buf_t, [start, end], side="left")
            yield start, end, buf[lo:hi]
            k += 1
            drop = int(np.searchsorted(buf_t, first + k * hop_us, side="left"))
            buf, buf_t = buf[drop:], buf_t[drop:]  # views: what no later window needs


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
        counts, frame_offsets = integrate_samples(np.concatenate(batch), offsets, frames)
        mask = None
        if frames.ragged:  # padded to the longest window, masked (SpikingJelly's padding)
            counts, lengths = pad_samples(counts, frame_offsets)  # [B, T, 2, H, W], [B]
            mask = padded_sequence_mask(torch.from_numpy(lengths).to(device))
        else:
            counts = counts.reshape(len(batch), frames.T, *counts.shape[1:])  # [B, T, 2, H, W]
        x = torch.from_numpy(counts.astype(np.float32)).to(device)
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
) -> Prediction:
    """Classify one recording with `net` and its `meta` (from `load_checkpoint_net`; run the net
    through `dvsgkit.model.inference.for_inference` first). Mode "sliding": windows of
    `window_us` every `hop_us` from the first event; mode "labels": exactly the windows of the
    `labels` CSV, cut as the event cache cuts its samples. `frames` defaults to the
    checkpoint's (`checkpoint_frames`), `batch_size` to DEFAULT_BATCH of the device type.
    With `labels`, the prediction is also scored (see `score`)."""
    if mode not in WINDOW_MODES:
        raise InputError(f"mode must be one of {', '.join(WINDOW_MODES)}; got {mode!r}")
    if mode == "labels" and labels is None:
        raise InputError(f"{recording}: --windows labels needs a labels CSV (--labels)")
    if window_us <= 0 or hop_us <= 0:
        raise InputError(f"window and hop must be > 0 µs, got {window_us} and {hop_us}")
    path = Path(recording)
    if batch_size is None:
        batch_size = DEFAULT_BATCH.get(str(device).split(":")[0], DEFAULT_BATCH["cuda"])
    frames = frames or checkpoint_frames(meta)
    gestures = read_gestures(labels) if labels is not None else None
    stats: dict[str, int] = {}
    if mode == "labels":  # cut as the event cache cuts: whatever the order of the timestamps
        samples = cut_chunks(_noting_first(iter_recording(path), stats), gestures)
        windows: Iterable[tuple[int, int, np.ndarray]] = (
            (int(g["start"]), int(g["end"]), s) for g, s in zip(gestures, samples, strict=True)
        )
    else:  # streamed by time: events out of order would be lost, so they are refused
        chunks = iter_recording(path, time_order=True)
        windows = sliding_windows(chunks, window_us, hop_us, stats, where=str(path))
    starts, ends, counts, rates = classify(
        net, windows, frames, device=device, batch_size=batch_size
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
