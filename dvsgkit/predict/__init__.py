"""Gestures found in recordings over time: windows of events classified by a trained network
(`windows`), written as CSV, JSON and a timeline picture (`outputs`). `predict_recordings` is
what `dvsgkit predict` runs."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dvsgkit.predict import windows
from dvsgkit.predict.outputs import DEFAULT_OUT_DIR, plan_outputs, write_outputs


def predict_recordings(
    checkpoint: str | os.PathLike[str],
    recordings: Sequence[str | os.PathLike[str]],
    labels: Sequence[str | os.PathLike[str]] = (),
    *,
    out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR,
    T: int | None = None,
    split_by: str | None = None,
    device: str | None = None,
    progress: bool = False,
    **options: Any,
) -> Iterator[tuple[windows.Prediction, dict[str, Path]]]:
    """Classify each recording with `checkpoint` (labels[i], if given, scores recording i;
    `options` as `windows.predict_recording` takes them; frames are the checkpoint's unless T or
    split_by is given), then write each one's outputs in `out_dir` and yield (prediction, the
    paths written). Every input and the output folder are checked, and every recording is
    classified, before any file is written."""
    from tqdm import tqdm

    from dvsgkit.device import default_device, parse_device
    from dvsgkit.model.inference import for_inference

    windows.check_inputs(recordings, labels)
    dev = parse_device(device or default_device())
    net, meta = windows.load_checkpoint_net(Path(checkpoint))
    net, frames = for_inference(net, dev), windows.checkpoint_frames(meta, T, split_by)
    plan_outputs(recordings, out_dir)
    with tqdm(recordings, unit="rec", leave=False,
              disable=not progress or len(recordings) < 2) as bar:  # fmt: skip
        preds = [
            windows.predict_recording(
                net,
                meta,
                recording,
                checkpoint=str(checkpoint),
                labels=labels[i] if labels else None,
                frames=frames,
                device=dev,
                **options,
            )  # fmt: skip
            for i, recording in enumerate(bar)
        ]
    for pred in preds:
        yield pred, write_outputs(pred, out_dir)
