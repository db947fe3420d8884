"""Training speed: dvsgkit's trainer vs SpikingJelly 0.0.0.0.14's seed networks, same frames.

Full size (the GPU machine, via bench/train_gpu.sh): a synthetic dataset in the real layout with
1176 train / 288 test samples at the real density (~360k events per sample) -> events.h5 ->
frames (T=16), then a few epochs each of

  dvsgkit train --cupy --amp          (layer-by-layer, fused CuPy LIF)
  dvsgkit train --amp                 (step-by-step), with and without channels_last
  SpikingJelly CextNet, PythonNet     (the seed's classify_dvsg loop body: AMP, Adam)

on the same frame store, all loaded onto the GPU once by dvsgkit's loader. Reports per network:
s/epoch (train + test, batches gathered on the GPU included; epoch 0, which pays for kernel
compilation and cuDNN autotuning, reported apart), ms per train step, peak GPU memory (torch
allocator, the frames' share included and stated), and test accuracy after the last epoch.

    python3 bench/train_gpu.py --json out.json                     # full size, CUDA
    .venv-bench/bin/python bench/train_gpu.py --small --device cpu # seconds: proves it runs
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
import sys
import time
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dvsgkit.config import TrainConfig
from dvsgkit.constants import NUM_CLASSES
from dvsgkit.data import FrameDataset, make_loader
from dvsgkit.plots import read_metrics
from dvsgkit.store.events import build_event_cache
from dvsgkit.store.frames import build_frame_store
from dvsgkit.synth import write_synthetic_dataset
from dvsgkit.train import train

FULL = {"train_trials": 98, "test_trials": 24, "events": 360_000, "T": 16, "channels": 128}
SMALL = {"train_trials": 2, "test_trials": 1, "events": 20_000, "T": 4, "channels": 8}


def prepare(root: Path, size: dict[str, int], workers: int) -> tuple[Path, dict[str, float]]:
    """Synthetic recordings -> events.h5 -> frames; each stage timed (a no-op when current)."""
    times = {}
    start = time.perf_counter()
    if not (root / "extract").is_dir():
        write_synthetic_dataset(root, seed=0, train_trials=size["train_trials"],
                                test_trials=size["test_trials"],
                                events_per_sample=size["events"])  # fmt: skip
    times["synth_s"] = time.perf_counter() - start
    start = time.perf_counter()
    build_event_cache(root, workers=workers, progress=False)
    times["events_s"] = time.perf_counter() - start
    start = time.perf_counter()
    store = build_frame_store(root, size["T"], "number", workers=workers, progress=False)
    times["frames_s"] = time.perf_counter() - start
    return store, times


def _memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def _summary(name: str, epochs: list[float], step_ms: list[float], **extra: Any) -> dict:
    later = epochs[1:] or epochs  # epoch 0 pays for compilation and autotuning
    return {
        "name": name,
        "epoch0_s": epochs[0],
        "s_per_epoch": statistics.median(later),
        "ms_per_train_step": statistics.median(step_ms[1:] or step_ms),
        **extra,
    }


def run_dvsgkit(name: str, config: TrainConfig, device: torch.device) -> dict:
    """The real trainer (`dvsgkit.train.train`), timed from its own metrics.jsonl."""
    _memory_reset(device)
    start = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - start
    records = read_metrics(result.run_dir)
    batch = config.batch_size
    step_ms = [1000 * batch / r["train_samples_per_s"] for r in records]
    return _summary(name, [r["total_time"] for r in records], step_ms,
                    peak_gib=_peak_gib(device), test_acc=records[-1]["test_acc"],
                    wall_s=wall)  # fmt: skip


def _seed_networks() -> Any:
    """SpikingJelly's classify_dvsg module (PythonNet, and CextNet when CuPy imports)."""
    try:  # the module imports SummaryWriter at import time; only that may be missing
        importlib.import_module("torch.utils.tensorboard")
    except ImportError:
        stub = types.ModuleType("torch.utils.tensorboard")
        stub.SummaryWriter = None
        sys.modules["torch.utils.tensorboard"] = stub
    from spikingjelly.clock_driven.examples import classify_dvsg

    return classify_dvsg


def run_seed(name: str, net: torch.nn.Module, store: Path, config: TrainConfig,
             device: torch.device) -> dict:  # fmt: skip
    """The seed script's epoch (its loop body: autocast + GradScaler, loss.item() per step,
    reset_net) over dvsgkit's loaders, so both read the same frames already on the GPU."""
    from spikingjelly.clock_driven import functional

    torch.manual_seed(config.seed)
    net = net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.T_max)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp)
    train_loader = make_loader(store, "train", config.batch_size, shuffle=True, drop_last=True,
                               device=device, seed=config.seed)  # fmt: skip
    test_loader = make_loader(store, "test", config.batch_size, shuffle=False, drop_last=False,
                              device=device)  # fmt: skip
    _memory_reset(device)
    epochs, step_ms, test_acc = [], [], 0.0
    for epoch in range(config.epochs):
        start = time.perf_counter()
        train_loader.set_epoch(epoch)
        net.train()
        for frame, label in train_loader:
            optimizer.zero_grad()
            with torch.autocast(device.type, dtype=torch.float16, enabled=config.amp):
                out_fr = net(frame)
                loss = F.mse_loss(out_fr, F.one_hot(label, NUM_CLASSES).float())
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss.item()  # the seed accumulates train_loss with .item() every step
            functional.reset_net(net)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_ms.append(1000 * (time.perf_counter() - start) / len(train_loader))
        scheduler.step()
        net.eval()
        correct = total = 0
        with torch.no_grad():
            for frame, label in test_loader:
                out_fr = net(frame)
                correct += (out_fr.argmax(1) == label).sum().item()
                total += label.numel()
                functional.reset_net(net)
        epochs.append(time.perf_counter() - start)
        test_acc = correct / total  # labels are any fixed bijection of the classes: learnable
        print(f"{name} epoch={epoch} total_time={epochs[-1]:.2f} test_acc={test_acc:.4f}",
              flush=True)  # fmt: skip
    return _summary(name, epochs, step_ms, peak_gib=_peak_gib(device), test_acc=test_acc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/dvsgkit_bench"))
    parser.add_argument("--small", action="store_true", help="toy size, to prove the script runs")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8, help="event/frame building processes")
    parser.add_argument("--skip-seed", action="store_true", help="no SpikingJelly runs")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()

    size = SMALL if args.small else FULL
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    store, prep = prepare(args.root, size, args.workers)
    print(f"data: {json.dumps(prep)}  store: {store}", flush=True)
    frames_gib = sum(
        math.prod(ds.shape) * ds.dtype.itemsize / 2**30
        for ds in (FrameDataset(store, split) for split in ("train", "test"))
    )
    out_dir = args.root / f"runs_{time.time_ns()}"
    base = TrainConfig(T=size["T"], channels=size["channels"], epochs=args.epochs,
                       device=str(device), root=str(args.root), out_dir=str(out_dir), amp=cuda,
                       T_max=64, workers=0, progress=False)  # fmt: skip
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    meta = {"device": device_name, "torch": torch.__version__, "size": size,
            "epochs": args.epochs, "prepare": prep, "frames_gib": frames_gib}  # fmt: skip

    # Most wanted first: whatever a time limit cuts off, the JSON so far is written.
    jobs: list[tuple[str, Any]] = []
    if cuda:
        jobs.append(("dvsgkit --cupy --amp", lambda: replace(base, cupy=True)))
    jobs.append((f"dvsgkit{' --amp' if cuda else ''} (step-by-step)", lambda: base))
    if not args.skip_seed:
        jobs += [("SpikingJelly CextNet (CuPy)", "CextNet")] if cuda else []
        jobs += [("SpikingJelly PythonNet", "PythonNet")]
    if cuda:
        jobs.append(
            ("dvsgkit --amp --no-channels-last", lambda: replace(base, channels_last=False))
        )

    results: list[dict] = []
    for name, job in jobs:
        print(f"--- {name}", flush=True)
        try:
            if isinstance(job, str):
                results.append(run_seed_job(name, job, store, base, device))
            else:
                results.append(run_dvsgkit(name, job(), device))
        except Exception as exc:  # a bench keeps going: one failed run must not hide the others
            print(f"{name} FAILED: {type(exc).__name__}: {exc}", flush=True)
            results.append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
        if args.json:
            args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")

    print(f"\n{device_name}; T={size['T']}, batch 16, channels {size['channels']}, "
          f"{args.epochs} epochs; the frames on the device ({frames_gib:.2f} GiB) are part of "
          f"each peak\n{'run':<36}{'s/epoch':>9}{'epoch 0 s':>11}{'ms/step':>9}"
          f"{'peak GiB':>10}{'test acc':>10}")  # fmt: skip
    for r in results:
        if "error" in r:
            print(f"{r['name']:<36}  failed: {r['error'][:80]}")
            continue
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        acc = f"{100 * r['test_acc']:.1f}%"
        print(f"{r['name']:<36}{r['s_per_epoch']:>9.2f}{r['epoch0_s']:>11.2f}"
              f"{r['ms_per_train_step']:>9.1f}{peak:>10}{acc:>10}")  # fmt: skip
    return 1 if any("error" in r for r in results) else 0


def run_seed_job(name: str, cls: str, store: Path, config: TrainConfig,
                 device: torch.device) -> dict:  # fmt: skip
    """Build the seed's network `cls` and time it under the seed script's cuDNN flags
    (deterministic, no autotuning: what classify_dvsg sets at import, which happens once, so every
    seed run sets them itself after dvsgkit's runs turned benchmark on); restored afterwards."""
    flags = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    classify_dvsg = _seed_networks()
    if not hasattr(classify_dvsg, cls):
        raise RuntimeError(f"SpikingJelly defines {cls} only when CuPy imports")
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        return run_seed(name, getattr(classify_dvsg, cls)(channels=config.channels), store,
                        config, device)  # fmt: skip
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags


if __name__ == "__main__":
    sys.exit(main())
