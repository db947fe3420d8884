"""The multi-step LIF as fused CuPy CUDA kernels: one forward and one backward kernel per layer.

The forward kernel loops over T for each neuron in registers and writes the spikes and the
charged membrane h (both in the input dtype); the backward kernel loops over T in reverse and
recomputes the spike from h, so the whole layer moves 3 tensors each way through GPU memory.
Math is fp32 in registers for every storage dtype (float32, float16, bfloat16), with the same
IEEE operations in the same order as `dvsgkit.model.lif.lif_step`, so fp32 results match the
reference bit for bit, except that CuPy compiles with -ftz=true, so a float32 subnormal (below
1.2e-38; nothing in the recipe comes near) is zero here. CuPy is optional:
`cupy_unavailable_reason()` says what is missing.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch.autograd.function import once_differentiable

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
from dvsgkit.model.lif import ALPHA, TAU, V_RESET, V_THRESHOLD

# storage dtype -> (C storage type, bytes per element)
KERNEL_DTYPES: dict[str, tuple[str, int]] = {
    "float32": ("float", 4),
    "float16": ("unsigned short", 2),  # IEEE half bits, converted with PTX cvt (no headers)
    "bfloat16": ("unsigned short", 2),  # the top 16 bits of a float32
}
VEC = 4  # neurons per thread on the vector path (16-byte fp32 / 8-byte 16-bit loads)
THREADS = 256


def _f32_literal(value: float) -> str:
    """A C float literal holding exactly float32(value), as torch rounds Python scalars."""
    f = float(np.float32(value))
    if not math.isfinite(f):
        raise ValueError(f"LIF parameter must be finite, got {value}")
    return f"{f!r}f"


def lif_defines(tau: float, v_threshold: float, v_reset: float, alpha: float) -> list[str]:
    """The `#define` lines that bake a LIF parameter set into kernel source (float32 literals)."""
    consts = {
        "TAU": _f32_literal(tau),
        "V_TH": _f32_literal(v_threshold),
        "V_RESET": _f32_literal(v_reset),
        "HALF_ALPHA": _f32_literal(alpha / 2),
        "PI_HALF_ALPHA": _f32_literal(math.pi / 2 * alpha),
    }
    return [f"#define {k} {v}" for k, v in consts.items()]


def _all_values(dtype: torch.dtype) -> torch.Tensor:
    """Every finite value of a 16-bit float dtype, sorted, as float64."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = bits.view(dtype).double()
    return values[torch.isfinite(values)].unique()


@functools.cache
def threshold_bracket(dtype_name: str, v_threshold: float) -> tuple[int, int]:
    """Bit patterns of the smallest 16-bit value >= v_threshold and the largest one below it,
    used to store h on the side of the threshold it was on (so backward sees forward's spike)."""
    dtype = getattr(torch, dtype_name)
    values = _all_values(dtype)
    th = float(np.float32(v_threshold))
    at_or_above = values[values >= th].min().to(dtype)
    below = values[values < th].max().to(dtype)
    return tuple(int(v.view(torch.int16).item()) & 0xFFFF for v in (at_or_above, below))


def _conversions(dtype_name: str) -> str:
    if dtype_name == "float32":
        return (
            "__device__ __forceinline__ float to_f32(float v) { return v; }\n"
            "__device__ __forceinline__ float from_f32(float f) { return f; }\n"
        )
    if dtype_name == "float16":
        return (
            "__device__ __forceinline__ float to_f32(unsigned short u) {\n"
            '  float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(u)); return f; }\n'
            "__device__ __forceinline__ unsigned short from_f32(float f) {\n"
            '  unsigned short u; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(u) : "f"(f)); return u; }\n'
        )
    return (  # bfloat16: round to nearest even on the top 16 bits; NaN stays a quiet NaN
        "__device__ __forceinline__ float to_f32(unsigned short u) {\n"
        "  return __uint_as_float(((unsigned int)u) << 16); }\n"
        "__device__ __forceinline__ unsigned short from_f32(float f) {\n"
        "  unsigned int b = __float_as_uint(f);\n"
        "  if ((b & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((b >> 16) | 0x40u);\n"
        "  b += 0x7fffu + ((b >> 16) & 1u);\n"
        "  return (unsigned short)(b >> 16); }\n"
    )


def kernel_source(
    dtype_name: str,
    *,
    tau: float = TAU,
    v_threshold: float = V_THRESHOLD,
    v_reset: float = V_RESET,
    alpha: float = ALPHA,
) -> str:
    """CUDA C++ source of `lif_forward_w{1,VEC}` and `lif_backward_w{1,VEC}` for one storage
    dtype and one parameter set (baked in as literals). Pure: no CuPy, no GPU, so a test can
    compile it with nvcc. Tensors are [T, M] contiguous, read as [T, M / w] vectors of w."""
    if dtype_name not in KERNEL_DTYPES:
        raise ValueError(f"no LIF kernel for dtype {dtype_name}; choose one of {KERNEL_DTYPES}")
    storage, size = KERNEL_DTYPES[dtype_name]
    lines = [f"// dvsgkit LIF kernels, storage {dtype_name}", f"typedef {storage} elem_t;"]
    lines += lif_defines(tau, v_threshold, v_reset, alpha)
    lines.append(_conversions(dtype_name))
    if size == 2:
        above, below = threshold_bracket(dtype_name, v_threshold)
        # Rounding h to 16 bits may cross the threshold; store the nearest value on the side
        # that forward fired on, so backward recomputes exactly forward's spike.
        keep_side = (
            "if ((to_f32(hs) >= V_TH) != fire) "
            f"hs = fire ? (elem_t){above:#06x} : (elem_t){below:#06x};"
        )
    else:
        keep_side = ""
    one = "1.0f" if size == 4 else ("(elem_t)0x3c00" if dtype_name == "float16" else "0x3f80")
    for w in sorted({1, VEC}):
        lines.append(_forward(w, size, one, keep_side))
        lines.append(_backward(w, size))
    return "\n".join(lines)


def _vec_type(w: int, size: int) -> str:
    return f"struct __align__({w * size}) vec{w}_t {{ elem_t e[{w}]; }};"


def _forward(w: int, size: int, one: str, keep_side: str) -> str:
    return f"""
{_vec_type(w, size)}
extern "C" __global__ void lif_forward_w{w}(
    const vec{w}_t* __restrict__ x, vec{w}_t* __restrict__ spike, vec{w}_t* __restrict__ h_out,
    const long long groups, const int steps)
{{
  const long long stride = (long long)blockDim.x * gridDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < groups; i += stride) {{
    float v[{w}];
#pragma unroll
    for (int j = 0; j < {w}; ++j) v[j] = V_RESET;
    long long k = i;
#pragma unroll 4
    for (int t = 0; t < steps; ++t, k += groups) {{
      const vec{w}_t xv = x[k];
      vec{w}_t sv, hv;
#pragma unroll
      for (int j = 0; j < {w}; ++j) {{
        // h = v + (x - (v - v_reset)) / tau, op for op as the reference (no FMA contraction)
        const float h = __fadd_rn(v[j], __fdiv_rn(__fsub_rn(to_f32(xv.e[j]),
                                                            __fsub_rn(v[j], V_RESET)), TAU));
        const bool fire = h >= V_TH;
        elem_t hs = from_f32(h);
        {keep_side}
        hv.e[j] = hs;
        sv.e[j] = fire ? {one} : (elem_t)0;
        v[j] = fire ? V_RESET : h;  // hard reset
      }}
      spike[k] = sv;
      if (h_out) h_out[k] = hv;  // null when no gradient is needed
    }}
  }}
}}
"""


def _backward(w: int, size: int) -> str:
    return f"""
extern "C" __global__ void lif_backward_w{w}(
    const vec{w}_t* __restrict__ grad_spike, const vec{w}_t* __restrict__ h_in,
    vec{w}_t* __restrict__ grad_x, const long long groups, const int steps)
{{
  const long long stride = (long long)blockDim.x * gridDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < groups; i += stride) {{
    float gv[{w}];  // dL/dv[t]: what reaches the membrane after step t from step t + 1
#pragma unroll
    for (int j = 0; j < {w}; ++j) gv[j] = 0.0f;
    long long k = i + (long long)(steps - 1) * groups;
#pragma unroll 4
    for (int t = steps - 1; t >= 0; --t, k -= groups) {{
      const vec{w}_t gs = grad_spike[k];
      const vec{w}_t hv = h_in[k];
      vec{w}_t gx;
#pragma unroll
      for (int j = 0; j < {w}; ++j) {{
        const float over = __fsub_rn(to_f32(hv.e[j]), V_TH);
        const float a = __fmul_rn(PI_HALF_ALPHA, over);
        // ATan surrogate ds/dh = (alpha / 2) / (1 + a^2), as torch's reciprocal * (alpha / 2)
        const float sg = __fmul_rn(__frcp_rn(__fadd_rn(1.0f, __fmul_rn(a, a))), HALF_ALPHA);
        // detach_reset: the reset passes gradient to h only where no spike (dv/dh = 1 - s)
        const float gh = __fadd_rn(__fmul_rn(to_f32(gs.e[j]), sg), over >= 0.0f ? 0.0f : gv[j]);
        const float gxt = __fdiv_rn(gh, TAU);  // dh/dx = 1 / tau
        gx.e[j] = from_f32(gxt);
        gv[j] = __fsub_rn(gh, gxt);  // dh/dv_prev = 1 - 1 / tau, summed as torch sums it
      }}
      grad_x[k] = gx;
    }}
  }}
}}
"""


@functools.cache
def _kernels(dtype_name: str, params: tuple[float, float, float, float], device: int):
    """Compile (once per dtype, parameter set and device) and return the four kernels."""
    require_cupy()
    tau, v_threshold, v_reset, alpha = params
    source = kernel_source(
        dtype_name, tau=tau, v_threshold=v_threshold, v_reset=v_reset, alpha=alpha
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
    kernels = _kernels(dtype_name, params, device)
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
