"""One LIF layer, forward + backward: torch reference vs dvsgkit CuPy vs SpikingJelly CuPy vs HBM.
Then PLIF: dvsgkit's PLIF kernels against its LIF kernels (target: PLIF <= 1.2x LIF) and
SpikingJelly's ParametricLIFNode CuPy kernels, fp16, at the first block's size.

Sizes are the network's LIF layers at T=16, N=16, C=128: [T, N, C, S, S] for S = 128 .. 8.
The bound is the traffic of dvsgkit's scheme (forward reads x, writes spikes and h; backward
reads the spike gradient and h, writes the input gradient: 6 tensors) over the bandwidth of a
device-to-device copy measured in the same run. "kernel ms" is GPU time of the LIF kernels
alone (torch profiler), "call ms" the wall time per forward+backward call (CUDA events).

    python bench/lif_kernel.py                     # on a CUDA machine
    python bench/lif_kernel.py --sizes 32,8 --dtypes float32 --reps 5
Without CUDA it says so and runs only the torch reference, tiny, to show the script works.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dvsgkit.model.lif import lif_multistep
from dvsgkit.model.plif import plif_multistep

LifFn = Callable[[torch.Tensor], torch.Tensor]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, default=16)
    p.add_argument("--N", type=int, default=16)
    p.add_argument("--C", type=int, default=128)
    p.add_argument("--sizes", default="128,64,32,16,8", help="spatial sizes S (layer [S, S])")
    p.add_argument("--dtypes", default="float32,float16")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-torch-above", type=int, default=128, help="skip torch ref above this S")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    p.add_argument("--plif-size", type=int, default=128, help="S of the PLIF comparison; 0: skip")
    return p.parse_args()


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, reps: int = 10) -> float:
    """Bytes/s of a device-to-device copy, counting bytes read and written."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return 2 * nbytes * reps / (start.elapsed_time(end) / 1e3)


def fwd_bwd(fn: LifFn, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    spikes = fn(x)
    (grad_x,) = torch.autograd.grad(spikes, x, grad)
    return spikes, grad_x


def call_ms(fn: LifFn, x: torch.Tensor, grad: torch.Tensor, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fwd_bwd(fn, x, grad)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fwd_bwd(fn, x, grad)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def kernel_ms(
    fn: LifFn, x: torch.Tensor, grad: torch.Tensor, names: tuple[str, ...]
) -> float | None:
    """GPU time per call of the kernels whose name contains one of `names` (CUPTI sees CuPy's
    launches too)."""
    from torch.profiler import ProfilerActivity, profile

    reps = 5
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fwd_bwd(fn, x, grad)
        torch.cuda.synchronize()
    total_us = 0.0
    for evt in prof.key_averages():
        if any(n in evt.key for n in names):
            total_us += getattr(evt, "device_time_total", getattr(evt, "cuda_time_total", 0.0))
    if total_us == 0.0:  # the profiler saw no such kernel (CUPTI unavailable?): no number
        return None
    return total_us / reps / 1e3


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing (a kernel time the profiler did not see)."""
    return None if a is None or b is None else a / b


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def spikingjelly_lif() -> tuple[LifFn | None, str]:
    """SpikingJelly 0.0.0.0.14's MultiStepLIFNode(backend='cupy') as a stateless function, or
    None and why not (it is optional here: the table then lacks its columns)."""
    try:
        from sj_classify_dvsg import stub_missing_imports  # bench/, beside this script

        stub_missing_imports()  # else its CuPy backend is dropped without tensorboard
        version = importlib.metadata.version("spikingjelly")
        neuron = importlib.import_module("spikingjelly.clock_driven.neuron")
        surrogate = importlib.import_module("spikingjelly.clock_driven.surrogate")
        if neuron.neuron_kernel is None:
            raise ImportError("its CuPy kernel module (clock_driven.neuron_kernel) did not import")
        node = neuron.MultiStepLIFNode(
            tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True, backend="cupy"
        )

        def run(x: torch.Tensor) -> torch.Tensor:
            node.reset()  # its membrane persists between calls otherwise
            return node(x)

        probe = torch.ones(2, 4, device="cuda", requires_grad=True)
        fwd_bwd(run, probe, torch.ones_like(probe))  # its kernels import and compile lazily
    except Exception as exc:  # optional competitor: CuPy's CompileException is
        # no RuntimeError, and any failure of SpikingJelly's must leave dvsgkit's numbers
        return None, f"spikingjelly unavailable ({type(exc).__name__}: {exc})"
    return run, f"spikingjelly {version}"


def spikingjelly_plif() -> tuple[LifFn | None, str]:
    """SpikingJelly's activation_based ParametricLIFNode(step_mode='m', backend='cupy'), or None
    and why not."""
    try:
        neuron = importlib.import_module("spikingjelly.activation_based.neuron")
        surrogate = importlib.import_module("spikingjelly.activation_based.surrogate")
        node = neuron.ParametricLIFNode(
            init_tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True,
            step_mode="m", backend="cupy",
        ).cuda()  # fmt: skip

        def run(x: torch.Tensor) -> torch.Tensor:
            node.reset()
            return node(x)

        probe = torch.ones(2, 4, device="cuda", requires_grad=True)
        fwd_bwd(run, probe, torch.ones_like(probe))
    except Exception as exc:  # optional competitor, as spikingjelly_lif
        return None, f"spikingjelly PLIF unavailable ({type(exc).__name__}: {exc})"
    return run, "spikingjelly ParametricLIFNode (cupy)"


def plif_comparison(args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    """fp16 forward+backward of one layer [T, N, C, S, S]: dvsgkit LIF vs dvsgkit PLIF (dL/dw
    included) vs SpikingJelly's PLIF; prints the ratios and returns them."""
    from dvsgkit.model import lif_cupy, plif_cupy

    w = torch.zeros((), device=device, requires_grad=True)

    def dvs_plif(x: torch.Tensor) -> torch.Tensor:
        return plif_cupy.plif_multistep_cupy(x, w.sigmoid())

    impls: dict[str, tuple[LifFn, tuple[str, ...]]] = {
        "dvsgkit_lif": (lif_cupy.lif_multistep_cupy, ("lif_forward", "lif_backward")),
        "dvsgkit_plif": (dvs_plif, ("plif_forward", "plif_backward")),
    }
    sj, sj_info = spikingjelly_plif()
    if sj is not None:
        impls["spikingjelly_plif"] = (sj, ("ParametricLIF",))
    shape = (args.T, args.N, args.C, args.plif_size, args.plif_size)
    g = torch.Generator(device=device).manual_seed(0)
    x = (torch.rand(shape, device=device, generator=g) * 2.5 - 0.25).half().requires_grad_(True)
    grad = torch.randn(shape, device=device, generator=g).half()
    row: dict[str, object] = {"dtype": "float16", "shape": list(shape), "sj": sj_info}
    for name, (fn, kernel_names) in impls.items():
        row[f"{name}_ms"] = call_ms(fn, x, grad, args.reps, args.warmup)
        row[f"{name}_kernel_ms"] = kernel_ms(fn, x, grad, kernel_names)
    with torch.no_grad():
        same = torch.equal(dvs_plif(x), lif_cupy.lif_multistep_cupy(x))  # w = 0 is the LIF
    row["plif_equals_lif_at_w0"] = same
    row["plif_over_lif_kernel"] = ratio(row["dvsgkit_plif_kernel_ms"], row["dvsgkit_lif_kernel_ms"])
    row["plif_over_lif_call"] = row["dvsgkit_plif_ms"] / row["dvsgkit_lif_ms"]
    print(f"PLIF fp16 {list(shape)}: {sj_info}; spikes equal to the LIF at w = 0: {same}")
    for name in impls:
        call, kernels = ms(row[f"{name}_ms"]), ms(row[f"{name}_kernel_ms"])
        print(f"  {name:18} call {call} ms   kernels {kernels} ms")
    print(
        f"  PLIF / LIF: kernels {ms(row['plif_over_lif_kernel'])}x, call "
        f"{row['plif_over_lif_call']:.2f}x (target <= 1.2x)"
    )
    if sj is not None:
        sj_ratio = ratio(row["spikingjelly_plif_kernel_ms"], row["dvsgkit_plif_kernel_ms"])
        row["sj_plif_over_dvs_plif_kernel"] = sj_ratio
        print(f"  SpikingJelly PLIF / dvsgkit PLIF: kernels {ms(sj_ratio)}x")
    return row


def cpu_smoke() -> None:
    print("needs CUDA: no CUDA GPU here (torch.cuda.is_available() is False); the kernels and")
    print("SpikingJelly's need one. Running only the torch reference, tiny, on CPU:")
    x = (torch.rand(16, 2, 8, 8, 8) * 2).requires_grad_(True)
    fwd_bwd(lif_multistep, x, torch.ones_like(x))  # warm-up: first calls pay for lazy setup
    t0 = time.perf_counter()
    spikes, grad_x = fwd_bwd(lif_multistep, x, torch.ones_like(x))
    ms = (time.perf_counter() - t0) * 1e3
    print(
        f"torch reference [16, 2, 8, 8, 8] float32: {ms:.2f} ms fwd+bwd, "
        f"rate {spikes.mean():.3f}, |grad| {grad_x.abs().mean():.4f}"
    )
    w = torch.zeros((), requires_grad=True)
    plif_spikes, plif_grad = fwd_bwd(
        lambda x_: plif_multistep(x_, w.sigmoid()), x, torch.ones_like(x)
    )
    same = torch.equal(plif_spikes, spikes) and torch.equal(plif_grad, grad_x)
    print(f"torch PLIF reference at w = 0 (tau 2) equals the LIF in spikes and dL/dx: {same}")


def main() -> int:
    args = parse_args()
    if not torch.cuda.is_available():
        cpu_smoke()
        return 0
    from dvsgkit.model import lif_cupy

    reason = lif_cupy.cupy_unavailable_reason()
    if reason is not None:
        print(f"needs CuPy: {reason}")
        return 1
    device = torch.device("cuda")
    bw = copy_bandwidth(device)
    sj, sj_info = spikingjelly_lif()
    print(
        f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
        f"cupy {lif_cupy.cp.__version__}, {sj_info}"
    )
    print(f"device-to-device copy: {bw / 1e12:.2f} TB/s (read + write)")
    impls: dict[str, tuple[LifFn, tuple[str, ...]]] = {
        "dvsgkit": (lif_cupy.lif_multistep_cupy, ("lif_forward", "lif_backward")),
        "torch": (lif_multistep, ()),
    }
    if sj is not None:
        impls["spikingjelly"] = (sj, ("LIFNode_fptt", "LIFNode_bptt"))
    header = (
        f"{'dtype':8} {'S':>4} {'elements':>11} {'bound':>7} {'dvsgkit':>15} "
        f"{'spikingjelly':>15} {'torch':>8} {'dvs/bound':>9} {'sj/dvs':>12} {'=sj':>7}"
    )
    print(
        "ms per forward+backward: call (LIF kernels only); dvs/bound uses dvsgkit's kernel ms; "
        "sj/dvs: call (kernel); =sj: spikes equal to SpikingJelly's (else the mismatch fraction)"
    )
    print(header)
    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for size in map(int, args.sizes.split(",")):
            shape = (args.T, args.N, args.C, size, size)
            g = torch.Generator(device=device).manual_seed(size)
            x = (torch.rand(shape, device=device, generator=g) * 2.5 - 0.25).to(dtype)
            x.requires_grad_(True)
            grad = torch.randn(shape, device=device, generator=g).to(dtype)
            bound = 6 * x.numel() * x.element_size() / bw * 1e3
            row: dict[str, object] = {"dtype": dtype_name, "S": size, "elements": x.numel()}
            row["bound_ms"] = bound
            outputs = {}
            for name, (fn, kernel_names) in impls.items():
                if name == "torch" and size > args.no_torch_above:
                    continue
                try:
                    row[f"{name}_ms"] = call_ms(fn, x, grad, args.reps, args.warmup)
                    if kernel_names:
                        row[f"{name}_kernel_ms"] = kernel_ms(fn, x, grad, kernel_names)
                    if name in ("dvsgkit", "spikingjelly"):
                        outputs[name] = fwd_bwd(fn, x, grad)
                except Exception as exc:  # SpikingJelly only, e.g. a kernel fails to build
                    if name != "spikingjelly":
                        raise
                    print(f"spikingjelly failed at {dtype_name} S={size}: {exc}", flush=True)
                    row["spikingjelly_error"] = f"{type(exc).__name__}: {exc}"
                    for key in ("spikingjelly_ms", "spikingjelly_kernel_ms"):
                        row.pop(key, None)
                torch.cuda.empty_cache()
            if len(outputs) == 2:
                (s1, g1), (s2, g2) = outputs["dvsgkit"], outputs["spikingjelly"]
                row["spike_mismatch_sj"] = float((s1 != s2).float().mean())
                row["grad_max_abs_diff_sj"] = float((g1.float() - g2.float()).abs().max())
            rows.append(row)
            if args.json:  # after every row: a time limit cuts off only what was not measured
                out = {"bandwidth_Bps": bw, "sj": sj_info, "rows": rows}
                args.json.write_text(json.dumps(out, indent=1))
            del outputs, x, grad
            torch.cuda.empty_cache()

            def fmt(name: str, row: dict = row) -> str:
                if f"{name}_ms" not in row:
                    return "-"
                k = row.get(f"{name}_kernel_ms")
                return f"{row[f'{name}_ms']:.3f}" + (f" ({k:.3f})" if k is not None else "")

            ratio_bound = ratio(row["dvsgkit_kernel_ms"], bound)
            row["dvs_kernel_over_bound"] = ratio_bound
            sj_ratio = "-"
            if "spikingjelly_ms" in row:
                row["sj_over_dvs_call"] = row["spikingjelly_ms"] / row["dvsgkit_ms"]
                row["sj_over_dvs_kernel"] = ratio(
                    row["spikingjelly_kernel_ms"], row["dvsgkit_kernel_ms"]
                )
                sj_ratio = f"{row['sj_over_dvs_call']:.2f} ({ms(row['sj_over_dvs_kernel'])})"
            mismatch = row.get("spike_mismatch_sj")
            same = "-" if mismatch is None else ("yes" if mismatch == 0 else f"{mismatch:.1e}")
            print(
                f"{dtype_name:8} {size:>4} {row['elements']:>11} {bound:>7.3f} "
                f"{fmt('dvsgkit'):>15} {fmt('spikingjelly'):>15} {fmt('torch'):>8} "
                f"{ms(ratio_bound):>9} {sj_ratio:>12} {same:>7}",
                flush=True,
            )
    if args.plif_size:
        plif_row = plif_comparison(args, device)
        if args.json:
            out = {"bandwidth_Bps": bw, "sj": sj_info, "rows": rows, "plif": plif_row}
            args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
