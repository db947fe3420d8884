"""`dvsgkit predict` throughput on one full-length synthetic recording, on the CPU: windows/s,
events/s and the ratio to real time (recording seconds classified per wall-clock second).

    .venv/bin/python bench/predict.py                      # demo network: 16 channels, T=8
    .venv/bin/python bench/predict.py --checkpoint runs/demo/.../checkpoint_max.pth

Without --checkpoint the network is an untrained GestureNet of the demo's size (what it costs
does not depend on its weights). Times four runs: a network that returns zeros (the reading +
windowing + framing share alone), the GestureNet layer by layer (as training tests it) and step
by step in channels-last layout, and as `dvsgkit predict` and `dvsgkit evaluate` run it
(`for_inference`: the InferenceNet), and compares their firing rates.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dvsgkit.demo import DEMO_CONFIG
from dvsgkit.io.recordings import iter_recording
from dvsgkit.model import GestureNet
from dvsgkit.model.inference import for_inference
from dvsgkit.predict.windows import load_checkpoint_net, predict_recording
from dvsgkit.synth import write_recording


class Zeros(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], 11)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--events-per-sample", type=int, default=250_000,
                    help="~12.3x this many events in the recording (default: ~3 M)")  # fmt: skip
    ap.add_argument("--window", type=int, default=1_500_000, help="µs")
    ap.add_argument("--hop", type=int, default=250_000, help="µs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None, help="default: predict's (4 on CPU)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.checkpoint is None:
        net = GestureNet(DEMO_CONFIG["channels"]).eval()
        meta = {"source": "untrained", "T": DEMO_CONFIG["T"], "split_by": "number",
                "channels": DEMO_CONFIG["channels"]}  # fmt: skip
    else:
        net, meta = load_checkpoint_net(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_recording(folder, "user30_lab", np.random.default_rng(0), args.events_per_sample)
        path = folder / "user30_lab.aedat"
        events = sum(len(c) for c in iter_recording(path))
        t = np.concatenate([c["t"][[0, -1]] for c in iter_recording(path)])
        seconds = (t.max() - t.min()) / 1e6
        print(f"recording: {events / 1e6:.2f} M events over {seconds:.1f} s, "
              f"{path.stat().st_size / 1e6:.0f} MB; network: {meta.get('channels')} channels, "
              f"T={meta['T']}, {args.threads} threads; window {args.window / 1e6:g} s, "
              f"hop {args.hop / 1e6:g} s, batch {args.batch_size or 'default'}")  # fmt: skip
        runs, times = {}, {}
        step = copy.deepcopy(net).eval().to(memory_format=torch.channels_last)
        step.mode = "step"
        models = (("data path only (zeros net)", Zeros()), ("layer-by-layer net", net.eval()),
                  ("step-by-step net", step),
                  ("predict (for_inference)", for_inference(net, "cpu")))  # fmt: skip
        for label, model in models:
            best = float("inf")
            for _ in range(args.repeats):
                begin = time.perf_counter()
                result = predict_recording(model, meta, path, window_us=args.window,
                                           hop_us=args.hop, batch_size=args.batch_size)  # fmt: skip
                best = min(best, time.perf_counter() - begin)
            runs[label], times[label] = result, best
            k = len(result.starts)
            print(f"{label:>28}: {best:6.2f} s, {k / best:7.1f} windows/s, "
                  f"{events / best / 1e6:6.2f} M events/s, {seconds / best:5.1f}x real time "
                  f"({k} windows)")  # fmt: skip
        layer, step_rates, fast = (runs[label].rates for label, _ in models[1:])
        differ = int((layer.argmax(1) != fast.argmax(1)).sum())
        print(
            f"predict against layer-by-layer: rates differ by at most "
            f"{np.abs(layer - fast).max():.3g}, predictions in {differ} of {len(fast)} windows "
            "(float rounding near a threshold)"
        )
        print(f"predict against step-by-step: rates identical: {np.array_equal(step_rates, fast)}")
        base = min(times["step-by-step net"], times["layer-by-layer net"])
        print(
            f"predict is {base / times['predict (for_inference)']:.2f}x faster than the "
            "faster GestureNet mode"
        )


if __name__ == "__main__":
    main()
