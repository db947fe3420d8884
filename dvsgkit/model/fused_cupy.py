"""CUDA source and CuPy launch of the fused conv-block tail: BatchNorm-apply + LIF/PLIF over T +
2x2 max-pool, one forward and one backward kernel.

One thread owns one 2x2 pooling window of one sample and channel and loops over the T steps in
registers. Forward reads the convolution output y once and writes only the pooled spikes.
Backward reads y and the pooled gradient, recomputes BatchNorm, the membrane trajectory (kept in
registers: T is a compile-time constant) and the pooling winner, then runs the neuron's backward
over T in reverse. It writes dL/dy and per-window partial sums (of dL/dx, dL/dx * x_hat and, for
the PLIF, dL/dk) that torch adds up per channel: deterministic, no atomics. In train mode the
dL/dy formula needs the per-channel sums first, so backward runs twice: once for the sums, once
for dL/dy. Windows cut by an odd height or width pool nothing (max_pool2d floors) but still get
dL/dy, which train-mode BatchNorm makes non-zero. Math is fp32 for every storage dtype.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from dvsgkit.model.cupy_runtime import build_kernels, cp, external_stream, require_cupy
from dvsgkit.model.lif_cupy import KERNEL_DTYPES, THREADS, _conversions, lif_defines

NEURONS = ("lif", "plif")
PARTS = {"lif": 2, "plif": 3}  # partial sums per window: dL/dx, dL/dx * x_hat (, dL/dk)

# Per neuron: charge h from membrane v and input x, the reset value, and the backward step from
# dL/dh (gh) to dL/dx (gx) and to the membrane before the step (gv), op for op as lif_cupy and
# plif_cupy (and so as the reference loops).
_CHARGE = {
    "lif": "__fadd_rn(v[p], __fdiv_rn(__fsub_rn(x, __fsub_rn(v[p], V_RESET)), TAU))",
    "plif": "__fadd_rn(v[p], __fmul_rn(__fsub_rn(x, v[p]), k))",
}
_RESET = {"lif": "V_RESET", "plif": "0.0f"}
_GRAD_X = {"lif": "__fdiv_rn(gh, TAU)", "plif": "__fmul_rn(gh, k)"}
_DECAY = {  # the PLIF reads sigmoid(w) from the device; the LIF's decay is the literal 1 / tau
    "lif": "  (void)decay;\n",
    "plif": "  const float k = *decay;\n",
}


def kernel_source(
    dtype_name: str,
    steps: int,
    neuron: str = "lif",
    *,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float = 0.0,
    alpha: float = 2.0,
) -> str:
    """CUDA C++ source of `fused_forward` and `fused_backward` for one storage dtype, number of
    steps T and neuron ("lif": tau and v_reset baked in; "plif": the decay is a device pointer,
    reset to 0). Pure: no CuPy, no GPU, so a test can compile it with nvcc or g++."""
    if dtype_name not in KERNEL_DTYPES:
        raise ValueError(f"no fused kernel for dtype {dtype_name}; choose one of {KERNEL_DTYPES}")
    if neuron not in NEURONS:
        raise ValueError(f"neuron must be one of {NEURONS}, got {neuron!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    storage, size = KERNEL_DTYPES[dtype_name]
    one = "1.0f" if size == 4 else ("(elem_t)0x3c00" if dtype_name == "float16" else "0x3f80")
    lines = [f"// dvsgkit fused BatchNorm + {neuron} + max-pool, {dtype_name}"]
    lines.append(f"typedef {storage} elem_t;")
    lines += [f"#define STEPS {steps}", *lif_defines(tau, v_threshold, v_reset, alpha)]
    lines.append(_conversions(dtype_name))
    lines += [_COMMON, _forward(neuron, one), _backward(neuron)]
    return "\n".join(lines)


# The geometry every kernel takes, and the window a task index names: channel fastest for a
# channels_last y (coalesced along C), else window column fastest.
_GEOMETRY = """
    const long long n_batch, const long long channels, const long long height,
    const long long width, const long long c_fast,
    const long long ys_n, const long long ys_c, const long long ys_h, const long long ys_w,
    const long long os_n, const long long os_c, const long long os_h, const long long os_w"""

_COMMON = r"""
struct window_t { long long n, c, row, col; };
__device__ __forceinline__ window_t window_of(long long i, long long channels, long long rows,
                                               long long cols, long long c_fast) {
  window_t w;
  if (c_fast) {
    w.c = i % channels; i /= channels; w.col = i % cols; i /= cols; w.row = i % rows;
    w.n = i / rows;
  } else {
    w.col = i % cols; i /= cols; w.row = i % rows; i /= rows; w.c = i % channels;
    w.n = i / channels;
  }
  return w;
}
// BatchNorm-apply as torch does on the CPU: scale = invstd * weight,
// shift = bias - mean * scale (one rounding), x = y * scale + shift (one rounding).
// bn is [4, C] float32: mean, invstd, weight, bias.
#define BN_SCALE_SHIFT(bn, c, channels) \
  const float mean = bn[c], invstd = bn[channels + c]; \
  const float scale = __fmul_rn(invstd, bn[2 * channels + c]); \
  const float shift = __fmaf_rn(-mean, scale, bn[3 * channels + c]);
"""


def _each_window(neuron: str) -> str:
    """Both kernels' loop head: one thread per (sample, channel, 2x2 window), grid-stride, with
    `win` the window and `tasks` their number (partial windows of odd H/W included)."""
    return f"""  const long long rows = (height + 1) / 2, cols = (width + 1) / 2;
  const long long tasks = n_batch * channels * rows * cols;
  const long long stride = (long long)blockDim.x * gridDim.x;
{_DECAY[neuron]}  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < tasks;
       i += stride) {{
    const window_t win = window_of(i, channels, rows, cols, c_fast);"""


def _forward(neuron: str, one: str) -> str:
    return f"""
extern "C" __global__ void fused_forward(
    const elem_t* __restrict__ y, const float* __restrict__ bn, const float* __restrict__ decay,
    elem_t* __restrict__ out,{_GEOMETRY})
{{
{_each_window(neuron)}
    if (2 * win.row + 1 >= height || 2 * win.col + 1 >= width) continue;  // pools nothing
    BN_SCALE_SHIFT(bn, win.c, channels)
    const long long base = win.n * ys_n + win.c * ys_c + 2 * win.row * ys_h + 2 * win.col * ys_w;
    const long long offset[4] = {{0, ys_w, ys_h, ys_h + ys_w}};  // max_pool2d's scan order
    const long long obase = win.n * os_n + win.c * os_c + win.row * os_h + win.col * os_w;
    float v[4];
#pragma unroll
    for (int p = 0; p < 4; ++p) v[p] = {_RESET[neuron]};
#pragma unroll 4
    for (int t = 0; t < STEPS; ++t) {{
      const long long row = (long long)t * n_batch;  // y is [T*N, ...]: step t, sample n
      bool any = false;
#pragma unroll
      for (int p = 0; p < 4; ++p) {{
        const float x = __fmaf_rn(to_f32(y[base + row * ys_n + offset[p]]), scale, shift);
        const float h = {_CHARGE[neuron]};
        const bool fire = h >= V_TH;
        any = any || fire;
        v[p] = fire ? {_RESET[neuron]} : h;  // hard reset
      }}
      out[obase + row * os_n] = any ? {one} : (elem_t)0;  // max of 0/1 spikes
    }}
  }}
}}
"""


def _backward(neuron: str) -> str:
    plif = neuron == "plif"
    dk_term = (
        "const float v_prev = (t == 0 || hs[t - 1][p] >= V_TH) ? 0.0f : hs[t - 1][p];\n"
        "        sum_k = __fadd_rn(sum_k, __fmul_rn(gh, __fsub_rn(x, v_prev)));  // dh/dk = x - v"
        if plif
        else ""
    )
    k_partial = "if (partial) partial[2 * tasks + i] = sum_k;" if plif else ""
    return f"""
extern "C" __global__ void fused_backward(
    const elem_t* __restrict__ y, const elem_t* __restrict__ grad_out,
    const float* __restrict__ bn, const float* __restrict__ coef,
    const float* __restrict__ decay, elem_t* __restrict__ grad_y,
    float* __restrict__ partial,{_GEOMETRY})
{{
{_each_window(neuron)}
    const bool pooled = 2 * win.row + 1 < height && 2 * win.col + 1 < width;
    bool valid[4];
    valid[0] = true;
    valid[1] = 2 * win.col + 1 < width;
    valid[2] = 2 * win.row + 1 < height;
    valid[3] = pooled;
    BN_SCALE_SHIFT(bn, win.c, channels)
    // dL/dy = dL/dx * scale + cb + x_hat * cd: cb, cd carry train-mode BatchNorm's batch
    // statistics (both 0 in eval mode, or in the pass that only sums).
    const float cb = coef ? coef[win.c] : 0.0f, cd = coef ? coef[channels + win.c] : 0.0f;
    const long long base = win.n * ys_n + win.c * ys_c + 2 * win.row * ys_h + 2 * win.col * ys_w;
    const long long offset[4] = {{0, ys_w, ys_h, ys_h + ys_w}};
    const long long obase = win.n * os_n + win.c * os_c + win.row * os_h + win.col * os_w;
    elem_t ys[STEPS][4];
    float hs[STEPS][4];  // the charged membrane, recomputed as forward did
    float v[4];
#pragma unroll
    for (int p = 0; p < 4; ++p) v[p] = {_RESET[neuron]};
#pragma unroll
    for (int t = 0; t < STEPS; ++t) {{
      const long long row = (long long)t * n_batch;
#pragma unroll
      for (int p = 0; p < 4; ++p) {{
        ys[t][p] = valid[p] ? y[base + row * ys_n + offset[p]] : (elem_t)0;
        const float x = __fmaf_rn(to_f32(ys[t][p]), scale, shift);
        const float h = {_CHARGE[neuron]};
        hs[t][p] = h;
        v[p] = h >= V_TH ? {_RESET[neuron]} : h;
      }}
    }}
    float gv[4] = {{0.0f, 0.0f, 0.0f, 0.0f}};  // dL/dv[t] from step t + 1
    float sum_g = 0.0f, sum_gx = 0.0f;{" float sum_k = 0.0f;" if plif else ""}
#pragma unroll
    for (int t = STEPS - 1; t >= 0; --t) {{
      const long long row = (long long)t * n_batch;
      const float gp = pooled ? to_f32(grad_out[obase + row * os_n]) : 0.0f;
      // max_pool2d's winner: the first maximum in scan order, so the first spiking element,
      // or element 0 when none spikes
      int winner = 0;
#pragma unroll
      for (int p = 3; p >= 0; --p) if (valid[p] && hs[t][p] >= V_TH) winner = p;
#pragma unroll
      for (int p = 0; p < 4; ++p) {{
        if (!valid[p]) continue;
        const float h = hs[t][p];
        const float over = __fsub_rn(h, V_TH);
        const float a = __fmul_rn(PI_HALF_ALPHA, over);
        const float sg = __fmul_rn(__frcp_rn(__fadd_rn(1.0f, __fmul_rn(a, a))), HALF_ALPHA);
        const float gs = p == winner ? gp : 0.0f;
        // detach_reset: the reset passes gradient to h only where no spike (dv/dh = 1 - s)
        const float gh = __fadd_rn(__fmul_rn(gs, sg), over >= 0.0f ? 0.0f : gv[p]);
        const float gx = {_GRAD_X[neuron]};
        gv[p] = __fsub_rn(gh, gx);
        const float yv = to_f32(ys[t][p]);
        const float x_hat = __fmul_rn(__fsub_rn(yv, mean), invstd);
        sum_g = __fadd_rn(sum_g, gx);
        sum_gx = __fadd_rn(sum_gx, __fmul_rn(gx, x_hat));
        {"const float x = __fmaf_rn(yv, scale, shift);" if plif else ""}
        {dk_term}
        if (grad_y)
          grad_y[base + row * ys_n + offset[p]] =
              from_f32(__fmaf_rn(x_hat, cd, __fmaf_rn(gx, scale, cb)));
      }}
    }}
    if (partial) {{
      partial[i] = sum_g;
      partial[tasks + i] = sum_gx;
      {k_partial}
    }}
  }}
}}
"""


@functools.cache
def _kernels(dtype_name: str, steps: int, neuron: str, params: tuple, device: int) -> dict:
    """Compile (once per dtype, T, neuron, parameter set and device) and return both kernels."""
    require_cupy()
    source = kernel_source(dtype_name, steps, neuron, **dict(params))
    return build_kernels(
        source, ["fused_forward", "fused_backward"], dtype_name, device, neuron=f"fused {neuron}"
    )


def cupy_launch(kind: str, spec: tuple, tensors: list, geometry: tuple, tasks: int) -> None:
    """Run `fused_{kind}` on the current torch stream of the first tensor's device. `spec` is
    (dtype name, steps, neuron, params); `tensors` are the kernel's pointer arguments in order
    (None for a null pointer); `geometry` its 13 integers."""
    ref = tensors[0]
    device = ref.device.index if ref.device.index is not None else torch.cuda.current_device()
    kernels = _kernels(*spec, device)
    blocks = max(1, min(math.ceil(tasks / THREADS), 1 << 20))  # grid-stride beyond that
    ptrs = [0 if t is None else t.data_ptr() for t in tensors]
    stream = external_stream(device, torch.cuda.current_stream(ref.device).cuda_stream)
    with cp.cuda.Device(device), stream:
        kernels[f"fused_{kind}"]((blocks,), (THREADS,), (*ptrs, *map(np.int64, geometry)))
