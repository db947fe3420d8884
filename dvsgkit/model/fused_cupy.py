"""CUDA source and CuPy launch of the fused conv-block tail: BatchNorm-apply + LIF/PLIF over T +
2x2 max-pool, one forward and one backward kernel (source: `dvsgkit.model.kernels`).

One thread owns one 2x2 pooling window of one sample and channel and loops over the T steps in
registers (T is compiled in). Forward reads the convolution output y once and writes only the
pooled spikes. Backward reads y and the pooled gradient once, recomputes BatchNorm, the membrane
trajectory and the pooling winner, runs the neuron's backward over T in reverse, and writes
dL/dx * scale (all of dL/dy in eval mode) and per-window partial sums (of dL/dx, dL/dx * x_hat
and, for the PLIF, dL/dk) that torch adds up per channel: deterministic, no atomics. In train
mode dL/dy also depends on those channel sums; the same kernel then finishes it in place,
element by element (`coef` given): one pass over T either way. Windows cut by an odd height or
width pool nothing (max_pool2d floors) but still get dL/dy, which train-mode BatchNorm makes
non-zero. Math is fp32 for every storage dtype.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from dvsgkit.model.cupy_runtime import build_kernels, cp, external_stream, require_cupy
from dvsgkit.model.kernels import KERNEL_DTYPES, NEURONS, block_threads, fused_source, index_bits

PARTS = {"lif": 2, "plif": 3}  # partial sums per window: dL/dx, dL/dx * x_hat (, dL/dk)


def kernel_source(
    dtype_name: str,
    steps: int,
    neuron: str = "lif",
    *,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float = 0.0,
    alpha: float = 2.0,
    index_bits: int = 32,
) -> str:
    """CUDA C++ source of `fused_forward` and `fused_backward` for one storage dtype, number of
    steps T and neuron ("lif": tau and v_reset baked in; "plif": the decay is a device pointer,
    reset to 0), from the template in `dvsgkit.model.kernels`. Pure: no CuPy, no GPU, so a test
    can compile it with nvcc or g++."""
    if dtype_name not in KERNEL_DTYPES:
        raise ValueError(f"no fused kernel for dtype {dtype_name}; choose one of {KERNEL_DTYPES}")
    if neuron not in NEURONS:
        raise ValueError(f"neuron must be one of {NEURONS}, got {neuron!r}")
    params = dict(tau=tau, v_threshold=v_threshold, v_reset=v_reset, alpha=alpha)
    return fused_source(dtype_name, steps, neuron, params, bits=index_bits)


@functools.cache
def _kernels(
    dtype_name: str, steps: int, neuron: str, params: tuple, bits: int, device: int
) -> dict:
    """Compile (once per dtype, T, neuron, parameter set, index width and device) and return
    both kernels."""
    require_cupy()
    source = kernel_source(dtype_name, steps, neuron, **dict(params), index_bits=bits)
    return build_kernels(
        source, ["fused_forward", "fused_backward"], dtype_name, device, neuron=f"fused {neuron}"
    )


def cupy_launch(kind: str, spec: tuple, tensors: list, geometry: tuple, tasks: int) -> None:
    """Run `fused_{kind}` on the current torch stream of the first tensor's device. `spec` is
    (dtype name, steps, neuron, params); `tensors` are the kernel's pointer arguments in order
    (None for a null pointer); `geometry` its 13 integers."""
    ref = tensors[0]  # y: the launch's largest tensor
    device = ref.device.index if ref.device.index is not None else torch.cuda.current_device()
    kernels = _kernels(*spec, index_bits(ref.numel()), device)
    name = f"fused_{kind}"
    threads = block_threads(name)
    blocks = max(1, min(math.ceil(tasks / threads), 1 << 20))  # grid-stride beyond that
    ptrs = [0 if t is None else t.data_ptr() for t in tensors]
    stream = external_stream(device, torch.cuda.current_stream(ref.device).cuda_stream)
    with cp.cuda.Device(device), stream:
        kernels[name]((blocks,), (threads,), (*ptrs, *map(np.int64, geometry)))
