"""The multi-step PLIF as fused CuPy CUDA kernels: the LIF kernels' scheme plus a learned decay.

Forward loops over T per neuron in registers, reading the decay `k = sigmoid(w)` from a 0-dim
float32 device tensor (no host synchronisation, the graph stays capturable), and writes the
spikes and the charged membrane h. Backward loops over T in reverse from h alone: the membrane
before step t is `v[t-1] = h[t-1]` unless step t-1 fired (then 0), and `(x[t] - v[t-1]) * k =
h[t] - v[t-1]`, so the gradient of k needs neither x nor a division per element:

    dL/dk = sum over neurons and steps of dL/dh[t] * (h[t] - v[t-1]) / k

Each thread sums its neurons' terms in fp32 (per neuron group, then a compensated total over the
groups it covers) and writes one partial; torch sums the partials
(deterministic, unlike atomics) and autograd carries dL/dk on to w through the sigmoid. The
backward grid is capped at a few blocks per SM so the partials stay small (about 1 MB).
Storage dtypes and the 16-bit threshold rule are those of `lif_cupy`; the source comes from the
template in `dvsgkit.model.kernels`.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from dvsgkit.model.cupy_runtime import build_kernels, cp, external_stream, require_cupy
from dvsgkit.model.kernels import KERNEL_DTYPES, THREADS, VEC, index_bits, unfused_source
from dvsgkit.model.lif import ALPHA, V_THRESHOLD
from dvsgkit.model.lif_cupy import storage_is_time_major

BLOCKS_PER_SM = 8  # 8 x 256 threads fill an SM; the backward grid strides beyond that


def kernel_source(
    dtype_name: str,
    *,
    v_threshold: float = V_THRESHOLD,
    alpha: float = ALPHA,
    index_bits: int = 32,
) -> str:
    """CUDA C++ source of `plif_forward_w{1,VEC}` and `plif_backward_w{1,VEC}` for one storage
    dtype (v_threshold and alpha baked in; the decay is a kernel argument), from the template in
    `dvsgkit.model.kernels`. Pure: no CuPy."""
    params = dict(v_threshold=v_threshold, alpha=alpha)
    return unfused_source(dtype_name, "plif", params, bits=index_bits)


@functools.cache
def _kernels(dtype_name: str, params: tuple[float, float], bits: int, device: int) -> dict:
    """Compile (once per dtype, parameter set, index width and device) and return the four
    kernels."""
    require_cupy()
    v_threshold, alpha = params
    source = kernel_source(dtype_name, v_threshold=v_threshold, alpha=alpha, index_bits=bits)
    names = [f"plif_{d}_w{w}" for d in ("forward", "backward") for w in sorted({1, VEC})]
    return build_kernels(source, names, dtype_name, device, neuron="PLIF")


@functools.cache
def _sm_count(device: int) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def vector_width(neurons: int, tensors: list[torch.Tensor | None], size: int) -> int:
    """VEC when every neuron row splits into aligned vectors of VEC elements, else 1."""
    ptrs = [t.data_ptr() for t in tensors if t is not None]
    return VEC if neurons % VEC == 0 and all(p % (VEC * size) == 0 for p in ptrs) else 1


def backward_blocks(groups: int, sm_count: int) -> int:
    """Blocks of the backward grid: enough to fill the GPU, few enough for small partials."""
    return max(1, min(math.ceil(groups / THREADS), sm_count * BLOCKS_PER_SM))


def _launch(kind: str, tensors: list, ref: torch.Tensor, params: tuple, blocks: int | None):
    """Run kernel `kind` on ref's stream; `tensors` are [T, M]-read time-major tensors sharing
    ref's layout, the decay, and (backward) the partials buffer, in kernel argument order."""
    steps = ref.shape[0]
    neurons = ref.numel() // steps
    device = ref.device.index if ref.device.index is not None else torch.cuda.current_device()
    bits = index_bits(ref.numel())
    kernels = _kernels(str(ref.dtype).removeprefix("torch."), params, bits, device)
    sequences = [t for t in tensors if t is None or t.shape == ref.shape]  # not decay/partials
    w = vector_width(neurons, sequences, ref.element_size())
    groups = neurons // w
    if blocks is None:
        blocks = max(1, min(math.ceil(groups / THREADS), 1 << 20))
    ptrs = [0 if t is None else t.data_ptr() for t in tensors]
    stream = torch.cuda.current_stream(ref.device).cuda_stream
    with cp.cuda.Device(device), external_stream(device, stream):
        kernels[f"plif_{kind}_w{w}"](
            (blocks,), (THREADS,), (*ptrs, np.int64(groups), np.int32(steps))
        )


class PLIFMultiStep(torch.autograd.Function):
    """Fused multi-step PLIF on a time-major tensor with a 0-dim float32 decay: saves h only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, decay: torch.Tensor, params: tuple) -> torch.Tensor:
        spike = torch.empty_like(x)
        h = torch.empty_like(x)
        _launch("forward", [x, decay, spike, h], x, params, None)
        ctx.save_for_backward(h, decay)
        ctx.params = params
        return spike

    @staticmethod
    @once_differentiable  # the kernels' gradient has no graph
    def backward(ctx, grad_spike: torch.Tensor):
        h, decay = ctx.saved_tensors
        grad_spike = grad_spike.to(h.dtype)  # the kernel reads h's dtype and memory layout
        if grad_spike.stride() != h.stride():
            grad_spike = torch.empty_like(h).copy_(grad_spike)
        grad_x = torch.empty_like(h)
        steps = h.shape[0]
        neurons = h.numel() // steps
        groups = neurons // vector_width(neurons, [grad_spike, h, grad_x], h.element_size())
        device = h.device.index if h.device.index is not None else torch.cuda.current_device()
        blocks = backward_blocks(groups, _sm_count(device))
        partial = torch.empty(blocks * THREADS, device=h.device, dtype=torch.float32)
        _launch("backward", [grad_spike, h, decay, grad_x, partial], h, ctx.params, blocks)
        grad_decay = partial.sum() / decay  # stays on the device
        return (grad_x if ctx.needs_input_grad[0] else None), grad_decay, None


def plif_multistep_cupy(
    x_seq: torch.Tensor,
    decay: torch.Tensor,
    *,
    v_threshold: float = V_THRESHOLD,
    alpha: float = ALPHA,
) -> torch.Tensor:
    """The fused-kernel twin of `plif.plif_multistep`: `x_seq [T, N, ...]` (CUDA; float32,
    float16 or bfloat16) and `decay` (one value, `w.sigmoid()`, on the same device) -> spikes of
    x's shape and dtype, from v = 0. Gradients reach x and decay."""
    require_cupy()
    if x_seq.dim() < 2:
        raise ValueError(f"x_seq must be time-major [T, N, ...], got shape {tuple(x_seq.shape)}")
    if not x_seq.is_cuda or decay.device != x_seq.device:
        raise ValueError(
            f"the CuPy PLIF needs x and decay on one CUDA device, got {x_seq.device} and "
            f"{decay.device}"
        )
    if decay.numel() != 1:
        raise ValueError(f"decay must be one value per layer, got shape {tuple(decay.shape)}")
    dtype_name = str(x_seq.dtype).removeprefix("torch.")
    if dtype_name not in KERNEL_DTYPES:
        raise ValueError(
            f"the CuPy PLIF supports {tuple(KERNEL_DTYPES)}, got {x_seq.dtype}; "
            "use plif.plif_multistep (backend='torch') for other dtypes"
        )
    params = (float(v_threshold), float(alpha))
    decay = decay.reshape(()).float()  # the kernels read one float32; autograd sees the cast
    if x_seq.numel() == 0:
        return torch.zeros_like(x_seq)
    x = x_seq if storage_is_time_major(x_seq) else x_seq.contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or decay.requires_grad):
        return PLIFMultiStep.apply(x, decay, params)
    spike = torch.empty_like(x)  # inference: the kernel skips writing h
    _launch("forward", [x, decay, spike, None], x, params, None)
    return spike
