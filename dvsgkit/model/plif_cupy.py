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
Storage dtypes and the 16-bit threshold rule are those of `lif_cupy`.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from dvsgkit.model.cupy_runtime import build_kernels, cp, external_stream, require_cupy
from dvsgkit.model.lif import ALPHA, V_THRESHOLD
from dvsgkit.model.lif_cupy import (
    KERNEL_DTYPES,
    THREADS,
    VEC,
    _conversions,
    _f32_literal,
    _vec_type,
    storage_is_time_major,
    threshold_bracket,
)

BLOCKS_PER_SM = 8  # 8 x 256 threads fill an SM; the backward grid strides beyond that


def kernel_source(
    dtype_name: str, *, v_threshold: float = V_THRESHOLD, alpha: float = ALPHA
) -> str:
    """CUDA C++ source of `plif_forward_w{1,VEC}` and `plif_backward_w{1,VEC}` for one storage
    dtype (v_threshold and alpha baked in; the decay is a kernel argument). Pure: no CuPy."""
    if dtype_name not in KERNEL_DTYPES:
        raise ValueError(f"no PLIF kernel for dtype {dtype_name}; choose one of {KERNEL_DTYPES}")
    storage, size = KERNEL_DTYPES[dtype_name]
    consts = {
        "V_TH": _f32_literal(v_threshold),
        "HALF_ALPHA": _f32_literal(alpha / 2),
        "PI_HALF_ALPHA": _f32_literal(math.pi / 2 * alpha),
    }
    lines = [f"// dvsgkit PLIF kernels, storage {dtype_name}", f"typedef {storage} elem_t;"]
    lines += [f"#define {k} {v}" for k, v in consts.items()]
    lines.append(_conversions(dtype_name))
    keep_side = ""
    if size == 2:  # see lif_cupy.kernel_source: backward must see forward's spike decision
        above, below = threshold_bracket(dtype_name, v_threshold)
        keep_side = (
            "if ((to_f32(hs) >= V_TH) != fire) "
            f"hs = fire ? (elem_t){above:#06x} : (elem_t){below:#06x};"
        )
    one = "1.0f" if size == 4 else ("(elem_t)0x3c00" if dtype_name == "float16" else "0x3f80")
    for w in sorted({1, VEC}):
        lines += [_vec_type(w, size), _forward(w, one, keep_side), _backward(w)]
    return "\n".join(lines)


def _forward(w: int, one: str, keep_side: str) -> str:
    return f"""
extern "C" __global__ void plif_forward_w{w}(
    const vec{w}_t* __restrict__ x, const float* __restrict__ decay,
    vec{w}_t* __restrict__ spike, vec{w}_t* __restrict__ h_out,
    const long long groups, const int steps)
{{
  const float k = *decay;  // sigmoid(w), computed on the device by torch
  const long long stride = (long long)blockDim.x * gridDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < groups; i += stride) {{
    float v[{w}];
#pragma unroll
    for (int j = 0; j < {w}; ++j) v[j] = 0.0f;
    long long n = i;
#pragma unroll 4
    for (int t = 0; t < steps; ++t, n += groups) {{
      const vec{w}_t xv = x[n];
      vec{w}_t sv, hv;
#pragma unroll
      for (int j = 0; j < {w}; ++j) {{
        // h = v + (x - v) * k, op for op as the reference (no FMA contraction)
        const float h = __fadd_rn(v[j], __fmul_rn(__fsub_rn(to_f32(xv.e[j]), v[j]), k));
        const bool fire = h >= V_TH;
        elem_t hs = from_f32(h);
        {keep_side}
        hv.e[j] = hs;
        sv.e[j] = fire ? {one} : (elem_t)0;
        v[j] = fire ? 0.0f : h;  // hard reset to 0
      }}
      spike[n] = sv;
      if (h_out) h_out[n] = hv;  // null when no gradient is needed
    }}
  }}
}}
"""


def _backward(w: int) -> str:
    return f"""
extern "C" __global__ void plif_backward_w{w}(
    const vec{w}_t* __restrict__ grad_spike, const vec{w}_t* __restrict__ h_in,
    const float* __restrict__ decay, vec{w}_t* __restrict__ grad_x,
    float* __restrict__ partial, const long long groups, const int steps)
{{
  const float k = *decay;
  // This thread's sum of dL/dh * (h - v_prev): one plain sum per neuron group (T * w terms),
  // added to a compensated (Kahan) total, so a thread covering many groups loses no precision.
  float acc = 0.0f, lost = 0.0f;
  const long long stride = (long long)blockDim.x * gridDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < groups; i += stride) {{
    float gv[{w}];  // dL/dv[t]: what reaches the membrane after step t from step t + 1
#pragma unroll
    for (int j = 0; j < {w}; ++j) gv[j] = 0.0f;
    float group_sum = 0.0f;
    long long n = i + (long long)(steps - 1) * groups;
    vec{w}_t hv = h_in[n];
#pragma unroll 4
    for (int t = steps - 1; t >= 0; --t, n -= groups) {{
      const vec{w}_t gs = grad_spike[n];
      vec{w}_t hp = hv;  // h[t-1], read once: it is the next iteration's h
      if (t > 0) hp = h_in[n - groups];
      vec{w}_t gx;
#pragma unroll
      for (int j = 0; j < {w}; ++j) {{
        const float h = to_f32(hv.e[j]);
        const float over = __fsub_rn(h, V_TH);
        const float a = __fmul_rn(PI_HALF_ALPHA, over);
        const float sg = __fmul_rn(__frcp_rn(__fadd_rn(1.0f, __fmul_rn(a, a))), HALF_ALPHA);
        // detach_reset: the reset passes gradient to h only where no spike (dv/dh = 1 - s)
        const float gh = __fadd_rn(__fmul_rn(to_f32(gs.e[j]), sg), over >= 0.0f ? 0.0f : gv[j]);
        const float gxt = __fmul_rn(gh, k);  // dh/dx = k
        gx.e[j] = from_f32(gxt);
        gv[j] = __fsub_rn(gh, gxt);  // dh/dv_prev = 1 - k, summed as torch sums it
        const float hprev = to_f32(hp.e[j]);
        const float v_prev = (t == 0 || hprev >= V_TH) ? 0.0f : hprev;
        group_sum = __fadd_rn(group_sum, __fmul_rn(gh, __fsub_rn(h, v_prev)));  // (x - v) k
      }}
      grad_x[n] = gx;
      hv = hp;
    }}
    const float y = __fsub_rn(group_sum, lost);
    const float total = __fadd_rn(acc, y);
    lost = __fsub_rn(__fsub_rn(total, acc), y);
    acc = total;
  }}
  partial[(long long)blockIdx.x * blockDim.x + threadIdx.x] = acc;
}}
"""


@functools.cache
def _kernels(dtype_name: str, params: tuple[float, float], device: int) -> dict:
    """Compile (once per dtype, parameter set and device) and return the four kernels."""
    require_cupy()
    v_threshold, alpha = params
    source = kernel_source(dtype_name, v_threshold=v_threshold, alpha=alpha)
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
    kernels = _kernels(str(ref.dtype).removeprefix("torch."), params, device)
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
