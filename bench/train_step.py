"""Train-step time and peak memory: SpikingJelly 0.0.0.0.14's classify_dvsg networks against
dvsgkit's, on the same GPU-resident synthetic frames, in one process.

Every network runs classify_dvsg's training step (AMP autocast + GradScaler, Adam, MSE against the
one-hot label; SpikingJelly's networks then reset) on one fixed batch [B, T, 2, 128, 128] of
binary frames already on the device; data loading is excluded. SpikingJelly's networks are timed
under classify_dvsg's cuDNN flags (deterministic, no autotuning: what classify_dvsg sets at
import) and under dvsgkit's (autotuning on), each named with its flags; dvsgkit's always run
under its own. SpikingJelly's optimizer is torch's default Adam, as in classify_dvsg; dvsgkit's is
the one its trainer builds (fused Adam on CUDA).

ms per step: median over `--rounds` rounds of `--steps` steps each (CUDA events), after
`--warmup` steps (kernel compilation, cuDNN autotuning, CUDA graph recording). Peak memory
(`peak_gib`): torch's allocator peak over the timed steps, i.e. what training needs (weights,
optimizer state, the shared batch of 34 MB at b16 T16, activations); `warmup_peak_gib` is the
peak from building the network to the end of warm-up, which also holds cuDNN's autotuning
workspaces (SpikingJelly under classify_dvsg's flags does not autotune). Networks run most wanted
first; the JSON is rewritten after each, so a time limit keeps what finished. A network that
breaks the CUDA context (an illegal address poisons every later call in the process) ends the
run with exit status 3; `--continue` then runs what the JSON does not hold yet.

    python bench/train_step.py --json out.json                   # CUDA: b16 T16 C128, AMP
    python bench/train_step.py --device cpu --tiny --json x.json # proves the plumbing
    python bench/train_step.py --json out.json --names "dvsgkit layer CuPy NHWC|dvsgkit step NHWC"
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sj_classify_dvsg import classify_dvsg_module  # bench/, next to this script

from dvsgkit.config import TrainConfig
from dvsgkit.constants import NUM_CLASSES
from dvsgkit.model import GestureNet
from dvsgkit.train import build_optim

SEED_FLAGS = {"benchmark": False, "deterministic": True}  # classify_dvsg's, set at import
DVSGKIT_FLAGS = {"benchmark": True, "deterministic": False}  # dvsgkit.train's on CUDA


def set_flags(flags: dict[str, bool]) -> None:
    torch.backends.cudnn.benchmark = flags["benchmark"]
    torch.backends.cudnn.deterministic = flags["deterministic"]


def seed_step(net: torch.nn.Module, amp: bool, device: torch.device) -> Callable:
    """classify_dvsg's training step for one of its networks."""
    from spikingjelly.clock_driven import functional

    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)

    def step(frames: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            out = net(frames)
            loss = F.mse_loss(out, F.one_hot(labels, NUM_CLASSES).float())
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        functional.reset_net(net)

    return step


def dvsgkit_step(net: GestureNet, amp: bool, device: torch.device) -> Callable:
    """dvsgkit.train's training step (its optimizer, loss and scaler use)."""
    optimizer, _ = build_optim(TrainConfig(), net.parameters(), device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step(frames: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            rates = net(frames)
        loss = F.mse_loss(rates.float(), F.one_hot(labels, NUM_CLASSES).float())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def networks(cuda: bool) -> list[tuple[str, dict[str, Any]]]:
    """(name, how to build it), most wanted first."""
    nets = []
    if cuda:
        nets += [
            ("dvsgkit layer CuPy NHWC", {"dvsgkit": {"mode": "layer", "backend": "cupy"}}),
            ("dvsgkit layer CuPy NHWC fused", {"dvsgkit": {"mode": "layer", "backend": "cupy",
                                                           "fused": True}}),
            ("SpikingJelly CextNet, seed cuDNN flags", {"seed": "CextNet", "flags": SEED_FLAGS}),
            ("SpikingJelly CextNet, dvsgkit cuDNN flags",
             {"seed": "CextNet", "flags": DVSGKIT_FLAGS}),
            ("dvsgkit layer CuPy NCHW", {"dvsgkit": {"mode": "layer", "backend": "cupy"},
                                         "nchw": True}),
        ]  # fmt: skip
    else:  # the plumbing on a CPU: the torch twin of the layer network
        nets += [("dvsgkit layer torch", {"dvsgkit": {"mode": "layer", "backend": "torch"}})]
    nets += [
        ("SpikingJelly PythonNet, seed cuDNN flags", {"seed": "PythonNet", "flags": SEED_FLAGS}),
        ("dvsgkit step NHWC", {"dvsgkit": {"mode": "step"}}),
        ("SpikingJelly PythonNet, dvsgkit cuDNN flags",
         {"seed": "PythonNet", "flags": DVSGKIT_FLAGS}),
        ("dvsgkit step NHWC compiled", {"dvsgkit": {"mode": "step", "compile_steps": True}}),
    ]  # fmt: skip
    return nets


def build(
    spec: dict[str, Any], channels: int, amp: bool, device: torch.device
) -> tuple[Callable, torch.nn.Module]:
    """The network's training step, and the network."""
    if "seed" in spec:
        module = classify_dvsg_module()
        if not hasattr(module, spec["seed"]):
            raise RuntimeError(f"SpikingJelly defines {spec['seed']} only when CuPy imports")
        set_flags(spec["flags"])
        net = getattr(module, spec["seed"])(channels=channels).to(device)
        return seed_step(net, amp, device), net
    set_flags(DVSGKIT_FLAGS)
    net = GestureNet(channels, **spec["dvsgkit"]).to(device)
    if not spec.get("nchw"):
        net.to(memory_format=torch.channels_last)  # what dvsgkit train does on CUDA
    return dvsgkit_step(net, amp, device), net


def time_steps(step: Callable, batch: tuple, device: torch.device, steps: int) -> float:
    """ms per step over `steps` steps."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step(*batch)
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / steps
    begin = time.perf_counter()
    for _ in range(steps):
        step(*batch)
    return 1000 * (time.perf_counter() - begin) / steps


def measure(name: str, spec: dict, batch: tuple, args: argparse.Namespace,
            device: torch.device) -> dict[str, Any]:  # fmt: skip
    cuda = device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    begin = time.perf_counter()
    step, net = build(spec, args.channels, args.amp, device)
    wants_compiled = bool(spec.get("dvsgkit", {}).get("compile_steps"))
    compiled = wants_compiled and net._compiles_steps(batch[0])
    if cuda and wants_compiled and not compiled:
        raise RuntimeError("the compiled time step cannot run here (no Triton?): not measured")
    for _ in range(args.warmup):
        step(*batch)
    warmup_peak = None
    if cuda:
        torch.cuda.synchronize(device)
        warmup_peak = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)  # the timed steps' own peak from here
    warmup_s = time.perf_counter() - begin
    rounds = [time_steps(step, batch, device, args.steps) for _ in range(args.rounds)]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return {
        "name": name,
        "ms_per_step": statistics.median(rounds),
        "ms_rounds": rounds,
        "peak_gib": peak,
        "warmup_peak_gib": warmup_peak,
        "warmup_s": warmup_s,
        "compiled_steps": compiled,  # the time step ran compiled (CUDA graphs)
        "cudnn": {"benchmark": torch.backends.cudnn.benchmark,
                  "deterministic": torch.backends.cudnn.deterministic},
    }  # fmt: skip


def context_usable(device: torch.device) -> bool:
    """Whether CUDA still works in this process after a failure (False after a sticky error,
    such as an illegal memory access, which fails every later call)."""
    if device.type != "cuda":
        return True
    try:
        torch.cuda.synchronize(device)
        torch.ones(1, device=device).add_(1).item()
    except Exception:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("-T", type=int, default=16)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="b2 T2 C4, 1+1x1 steps: plumbing")
    parser.add_argument("--only", default="", help="comma-separated substrings of names to run")
    parser.add_argument("--names", default="", help="'|'-separated names to run, exactly")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument(
        "--continue", dest="resume", action="store_true",
        help="keep the results already in --json and run only the networks it lacks",
    )  # fmt: skip
    args = parser.parse_args()
    device = torch.device(args.device)
    exact = {w for w in args.names.split("|") if w}
    known = [name for name, _ in networks(device.type == "cuda")]
    if exact - set(known):
        parser.error(f"--names {'|'.join(sorted(exact - set(known)))!r}: no such network on "
                     f"{device.type}; the names are {'|'.join(known)!r}")  # fmt: skip
    if args.tiny:
        args.batch, args.T, args.channels, args.warmup, args.steps, args.rounds = 2, 2, 4, 1, 1, 1
    args.amp = device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    frames = (torch.rand(args.batch, args.T, 2, 128, 128, generator=g) < 0.3).float()
    labels = torch.arange(args.batch) % NUM_CLASSES
    batch = (frames.to(device), labels.to(device))
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "batch": args.batch, "T": args.T,
        "channels": args.channels, "amp": args.amp, "warmup": args.warmup,
        "steps": args.steps, "rounds": args.rounds,
    }  # fmt: skip
    results: list[dict[str, Any]] = []
    if args.resume and args.json.exists():
        results = json.loads(args.json.read_text())["results"]
    done = {r["name"] for r in results}

    def save() -> None:  # after every network: a time limit keeps what finished
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")

    wanted = [w for w in args.only.split(",") if w]
    for name, spec in networks(device.type == "cuda"):
        if name in done or (wanted and not any(w in name for w in wanted)):
            continue
        if exact and name not in exact:
            continue
        print(f"--- {name}", flush=True)
        try:
            results.append(measure(name, spec, batch, args, device))
            r = results[-1]
            peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f} GiB"
            print(f"{name}: {r['ms_per_step']:.2f} ms/step, peak {peak}", flush=True)
        except Exception as exc:  # one network failing must not hide the others' numbers
            print(f"{name} FAILED: {type(exc).__name__}: {exc}", flush=True)
            results.append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
            if not context_usable(device):
                save()
                print(f"{name} broke the CUDA context; rerun with --continue", flush=True)
                return 3
        save()
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
