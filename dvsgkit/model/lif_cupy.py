"""The multi-step LIF as fused CuPy CUDA kernels: one forward and one backward kernel per layer.

The forward kernel loops over T for each neuron in registers and writes the spikes and the
charged membrane h (both in the input dtype); the backward kernel loops over T in reverse and
recomputes the spike from h, so the whole layer moves 3 tensors each way through GPU memory.
Math is fp32 in registers for every storage dtype (float32, float16, bfloat16), with the same
IEEE operations in the same order as `dvsgkit.model.lif.lif_step`, so fp32 results match the
reference bit for bit, except that CuPy compiles with -ftz=true, so a float32 subnormal (below
1.2e-38; nothing in the recipe comes near) is zero here. The source comes from the template in
`dvsgkit.model.kernels`; this module launches it. CuPy is optional: `cupy_unavailable_reason()`
says what is missing.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from dvsgkit.constants import ALPHA, TAU, V_RESET, V_THRESHOLD
from dvsgkit.model.cupy_runtime import (  # noqa: F401  (re-exported: the LIF's public names)
    FALLBACK_HINT,
    INSTALL_HINT,
    CupyKernelError,
    CupyUnavailableError,
    build_kernels,
    cp,
    cupy_unavailable_reason,
    external_stream,
    readable_kernel_error,
    require_cupy,
)
from dvsgkit.model.kernels import (  # noqa: F401  (the kernels' names, as before)
    KERNEL_DTYPES,
    THREADS,
    VEC,
    index_bits,
    threshold_bracket,
    unfused_source,
)


def kernel_source(
    dtype_name: str,
    *,
    tau: float = TAU,
    v_threshold: float = V_THRESHOLD,
    v_reset: float = V_RESET,
    alpha: float = ALPHA,
    index_bits: int = 32,
) -> str:
    """CUDA C++ source of `lif_forward_w{1,VEC}` and `lif_backward_w{1,VEC}` for one storage
    dtype and one parameter set (baked in as literals), from the template in
    `dvsgkit.model.kernels`. Pure: no CuPy, no GPU, so a test can compile it with nvcc. Tensors
    are [T, M] contiguous, read as [T, M / w] vectors of w; 32-bit indices unless index_bits=64."""
    params = dict(tau=tau, v_threshold=v_threshold, v_reset=v_reset, alpha=alpha)
    return unfused_source(dtype_name, "lif", params, bits=index_bits)


@functools.cache
def _kernels(dtype_name: str, params: tuple[float, float, float, float], bits: int, device: int):
    """Compile (once per dtype, parameter set, index width and device) and return the four
    kernels."""
    require_cupy()
    tau, v_threshold, v_reset, alpha = params
    source = kernel_source(
        dtype_name,
        tau=tau,
        v_threshold=v_threshold,
        v_reset=v_reset,
        alpha=alpha,
        index_bits=bits,
    )
    names = [f"lif_{d}_w{w}" for d in ("forward", "backward") for w in sorted({1, VEC})]
    return build_kernels(source, names, dtype_name, device)


def storage_is_time_major(x_seq: torch.Tensor) -> bool:
    """True when x_seq's memory is one dense block per time step, steps in order: T is the
    outermost dimension and the others tile each step without gaps in any order (contiguous,
    or channels_last convolution outputs unflattened to [T, N, C, H, W]). An elementwise
    kernel then runs on the storage as it is, and outputs made by empty_like share its strides."""
    steps, numel = x_seq.shape[0], x_seq.numel()
    if numel == 0 or (steps > 1 and x_seq.stride(0) != numel // steps):
        return False
    dims = zip(x_seq.stride()[1:], x_seq.shape[1:], strict=True)
    inner = sorted((stride, size) for stride, size in dims if size != 1)
    expected = 1
    for stride, size in inner:
        if stride != expected:
            return False
        expected *= size
    return True


def _launch(kind: str, tensors: list[torch.Tensor | None], ref: torch.Tensor, params: tuple):
    """Run kernel `kind` ("forward"/"backward") on ref's stream over tensors that share ref's
    time-major storage layout, read as [T, M] (M = neurons per step)."""
    steps = ref.shape[0]
    neurons = ref.numel() // steps
    dtype_name = str(ref.dtype).removeprefix("torch.")
    device = ref.device.index if ref.device.index is not None else torch.cuda.current_device()
    kernels = _kernels(dtype_name, params, index_bits(ref.numel()), device)
    ptrs = [0 if t is None else t.data_ptr() for t in tensors]
    size = ref.element_size()
    w = VEC if neurons % VEC == 0 and all(p % (VEC * size) == 0 for p in ptrs) else 1
    groups = neurons // w
    blocks = max(1, min(math.ceil(groups / THREADS), 1 << 20))  # grid-stride beyond that
    stream = torch.cuda.current_stream(ref.device).cuda_stream
    with cp.cuda.Device(device), external_stream(device, stream):
        kernels[f"lif_{kind}_w{w}"](
            (blocks,), (THREADS,), (*ptrs, np.int64(groups), np.int32(steps))
        )


class LIFMultiStep(torch.autograd.Function):
    """Fused multi-step LIF on a time-major tensor (`storage_is_time_major`): saves only h."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, params: tuple) -> torch.Tensor:
        spike = torch.empty_like(x)
        h = torch.empty_like(x)
        _launch("forward", [x, spike, h], x, params)
        ctx.save_for_backward(h)
        ctx.params = params
        return spike

    @staticmethod
    @once_differentiable  # the kernels' gradient has no graph
    def backward(ctx, grad_spike: torch.Tensor):
        (h,) = ctx.saved_tensors
        grad_spike = grad_spike.to(h.dtype)  # the kernel reads h's dtype and memory layout
        if grad_spike.stride() != h.stride():
            grad_spike = torch.empty_like(h).copy_(grad_spike)
        grad_x = torch.empty_like(h)
        _launch("backward", [grad_spike, h, grad_x], h, ctx.params)
        return grad_x, None


def lif_multistep_cupy(
    x_seq: torch.Tensor,
    *,
    tau: float = TAU,
    v_threshold: float = V_THRESHOLD,
    v_reset: float = V_RESET,
    alpha: float = ALPHA,
) -> torch.Tensor:
    """The fused-kernel twin of `lif.lif_multistep`: `x_seq [T, N, ...]` (CUDA; float32, float16
    or bfloat16) -> spikes of the same shape and dtype, from v = v_reset."""
    require_cupy()
    if x_seq.dim() < 2:
        raise ValueError(f"x_seq must be time-major [T, N, ...], got shape {tuple(x_seq.shape)}")
    if not x_seq.is_cuda:
        raise ValueError(f"the CuPy LIF needs a CUDA tensor, got one on {x_seq.device}")
    dtype_name = str(x_seq.dtype).removeprefix("torch.")
    if dtype_name not in KERNEL_DTYPES:
        raise ValueError(
            f"the CuPy LIF supports {tuple(KERNEL_DTYPES)}, got {x_seq.dtype}; "
            "use lif.lif_multistep (backend='torch') for other dtypes"
        )
    params = (float(tau), float(v_threshold), float(v_reset), float(alpha))
    if x_seq.numel() == 0:
        return torch.zeros_like(x_seq)
    # Keep a channels_last (or any dense, time-outermost) layout as is: no copy in, none out.
    x = x_seq if storage_is_time_major(x_seq) else x_seq.contiguous()
    if torch.is_grad_enabled() and x.requires_grad:
        return LIFMultiStep.apply(x, params)
    spike = torch.empty_like(x)  # inference: the kernel skips writing h
    _launch("forward", [x, spike, None], x, params)
    return spike
