"""CUDA source of every CuPy kernel, generated from one template, and what each launch moves.

Two kernel families, each for the LIF and the PLIF and for float32, float16 and bfloat16 storage
(the math is float32 in registers, op for op as the reference loops in `lif.py` and `plif.py`):

- unfused (`lif_cupy`, `plif_cupy`): one spiking layer over T on a `[T, M]` tensor.
  `{neuron}_forward_w{1,4}` writes the spikes and the charged membrane h;
  `{neuron}_backward_w{1,4}` runs over T in reverse from h alone. w is the neurons per thread:
  4 (one 16- or 8-byte vector load) where the layout allows it.
- fused (`fused_cupy`): `fused_forward` and `fused_backward` of a conv block's tail,
  BatchNorm-apply + neuron over T + 2x2 max-pool, one thread per pooling window.

The neurons differ only in their charge step (`neuron_code`: charge, reset value, dh/dx, and
where the decay comes from); the PLIF's learned decay adds the partial sums of its gradient.

Memory stays busy: each thread issues the loads of several time steps (CHUNK steps in the
unfused kernels, all T in the fused ones) before it uses the first, so a warp keeps many
requests in flight instead of one; no slow-path division sits in the charge step where it can
be avoided (a LIF whose tau is a power of two multiplies by 1/tau, exact, so the bits do not
change); indices are 32-bit where the host checked that every index of the launch fits
(`index_bits`), else 64-bit. `bench/kernel_report.py` measures all this from the compiled SASS.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

# storage dtype -> (C storage type, bytes per element)
KERNEL_DTYPES: dict[str, tuple[str, int]] = {
    "float32": ("float", 4),
    "float16": ("unsigned short", 2),  # IEEE half bits, converted with PTX cvt (no headers)
    "bfloat16": ("unsigned short", 2),  # the top 16 bits of a float32
}
NEURONS = ("lif", "plif")
VEC = 4  # neurons per thread on the vector path (16-byte fp32 / 8-byte 16-bit loads)
THREADS = 256  # threads per block of the unfused kernels
# unfused kernels: time steps whose loads a thread issues together, by neurons per thread
# (bench/kernel_report.py: these keep the most bytes in flight per SM, registers included)
CHUNK = {1: 16, VEC: 4}
# Threads per block of the fused kernels: the backward holds the whole trajectory in registers,
# so smaller blocks let more of them fit an SM's register file
FUSED_THREADS = {"fused_forward": 256, "fused_backward": 128}
FINISH_CHUNK = 8  # fused backward's finish: time steps whose loads a thread issues together
INDEX_LIMIT = 2**30  # 32-bit indices where a launch's tensors hold at most this many elements


def block_threads(kernel: str) -> int:
    """Threads per block of `kernel`'s launches."""
    return FUSED_THREADS.get(kernel, THREADS)


def index_bits(*numels: int) -> int:
    """32 when every index (and index + grid stride) of tensors this large fits an int, else 64."""
    return 32 if max(numels, default=0) <= INDEX_LIMIT else 64


def f32_literal(value: float) -> str:
    """A C float literal holding exactly float32(value), as torch rounds Python scalars."""
    f = float(np.float32(value))
    if not math.isfinite(f):
        raise ValueError(f"LIF parameter must be finite, got {value}")
    return f"{f!r}f"


def _exact_inverse(value: float) -> float | None:
    """1 / value when value is a power of two whose inverse is a normal float32: then
    `x * (1 / value)` rounds exactly as `x / value`, bit for bit. Else None."""
    f = float(np.float32(value))
    mantissa, exponent = math.frexp(f)
    if mantissa != 0.5 or not -126 <= 1 - exponent <= 127:
        return None
    return 1.0 / f


def lif_defines(tau: float, v_threshold: float, v_reset: float, alpha: float) -> list[str]:
    """The `#define` lines that bake a LIF parameter set into kernel source (float32 literals)."""
    consts = {
        "TAU": f32_literal(tau),
        "V_TH": f32_literal(v_threshold),
        "V_RESET": f32_literal(v_reset),
        "HALF_ALPHA": f32_literal(alpha / 2),
        "PI_HALF_ALPHA": f32_literal(math.pi / 2 * alpha),
    }
    inverse = _exact_inverse(tau)
    if inverse is not None:
        consts["INV_TAU"] = f32_literal(inverse)
    return [f"#define {k} {v}" for k, v in consts.items()]


def plif_defines(v_threshold: float, alpha: float) -> list[str]:
    """The PLIF's baked-in parameters (its decay is read from the device)."""
    consts = {
        "V_TH": f32_literal(v_threshold),
        "HALF_ALPHA": f32_literal(alpha / 2),
        "PI_HALF_ALPHA": f32_literal(math.pi / 2 * alpha),
    }
    return [f"#define {k} {v}" for k, v in consts.items()]


def conversions(dtype_name: str) -> str:
    """`to_f32` / `from_f32` between the storage type and float32."""
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


@dataclass(frozen=True)
class NeuronCode:
    """What one neuron's kernels compute differently from another's, as CUDA C++.

    `charge` is the body of `charge(v, x, k)`: membrane v before the step, input x, decay k ->
    h; `grad_x` the body of `grad_x(gh, k)`: dL/dh -> dL/dx (the membrane gets gh - dL/dx, as
    dh/dv = 1 - dh/dx for both neurons); `reset` the membrane after a spike and at rest.
    `decay` is where k comes from: "literal" (the LIF's k is 1/tau, baked in) or "device" (the
    PLIF reads sigmoid(w) from a float32 on the device and learns it)."""

    charge: str
    grad_x: str
    reset: str
    decay: str


def _lif_code(tau: float) -> NeuronCode:
    # h = v + (x - (v - v_reset)) / tau, op for op as the reference (no FMA contraction); a
    # power-of-two tau multiplies by its exact inverse (same bits, no division slow path)
    scale = "__fmul_rn({}, INV_TAU)" if _exact_inverse(tau) is not None else "__fdiv_rn({}, TAU)"
    return NeuronCode(
        charge="return __fadd_rn(v, " + scale.format("__fsub_rn(x, __fsub_rn(v, V_RESET))") + ");",
        grad_x="return " + scale.format("gh") + ";",  # dh/dx = 1 / tau
        reset="V_RESET",
        decay="literal",
    )


PLIF_CODE = NeuronCode(  # h = v + (x - v) * k, op for op as the reference
    charge="return __fadd_rn(v, __fmul_rn(__fsub_rn(x, v), k));",
    grad_x="return __fmul_rn(gh, k);",  # dh/dx = k
    reset="0.0f",
    decay="device",
)


def neuron_code(neuron: str, params: dict[str, float]) -> NeuronCode:
    """The neuron's code for a parameter set (the LIF's depends on tau)."""
    if neuron not in NEURONS:
        raise ValueError(f"neuron must be one of {NEURONS}, got {neuron!r}")
    return _lif_code(params["tau"]) if neuron == "lif" else PLIF_CODE


def _prelude(title: str, dtype_name: str, neuron: str, params: dict, bits: int) -> list[str]:
    """Types, baked-in parameters, conversions and the per-neuron device functions."""
    if dtype_name not in KERNEL_DTYPES:
        raise ValueError(f"no {title} kernel for dtype {dtype_name}; choose one of {KERNEL_DTYPES}")
    if bits not in (32, 64):
        raise ValueError(f"index_bits must be 32 or 64, got {bits!r}")
    code = neuron_code(neuron, params)
    storage, _ = KERNEL_DTYPES[dtype_name]
    lines = [f"// dvsgkit {title} kernels, storage {dtype_name}", f"typedef {storage} elem_t;"]
    lines.append("#ifndef __CUDACC__  // built as plain C++ (the CPU test harness): no GPU hints")
    lines.append("#define __launch_bounds__(...)\n#endif")
    wide = "long long" if bits == 64 else "int"
    lines.append(f"typedef {wide} idx_t;  // element indices")
    lines.append(f"typedef unsigned {wide} uidx_t;  // the same, for division")
    if neuron == "lif":
        lines += lif_defines(params["tau"], params["v_threshold"], params["v_reset"],
                             params["alpha"])  # fmt: skip
    else:
        lines += plif_defines(params["v_threshold"], params["alpha"])
    lines.append(f"#define RESET {code.reset}  // the membrane at rest and after a spike")
    lines.append(conversions(dtype_name))
    lines.append(f"""// the neuron's charge step and its gradient (k: the PLIF's decay)
__device__ __forceinline__ float charge(float v, float x, float k) {{
  {code.charge} }}
__device__ __forceinline__ float grad_x(float gh, float k) {{  // dL/dh -> dL/dx
  {code.grad_x} }}
// ATan surrogate ds/dh at over = h - v_th: (alpha / 2) / (1 + a^2), a = pi / 2 * alpha * over,
// as torch computes it (a reciprocal, then times alpha / 2)
__device__ __forceinline__ float surrogate(float over) {{
  const float a = __fmul_rn(PI_HALF_ALPHA, over);
  return __fmul_rn(__frcp_rn(__fadd_rn(1.0f, __fmul_rn(a, a))), HALF_ALPHA); }}""")
    return lines


def _one(dtype_name: str) -> str:
    """A spike (1.0) in the storage type."""
    return {"float32": "1.0f", "float16": "(elem_t)0x3c00", "bfloat16": "0x3f80"}[dtype_name]


def _keep_side(dtype_name: str, v_threshold: float) -> str:
    """Rounding h to 16 bits may cross the threshold; store the nearest value on the side that
    forward fired on, so backward recomputes exactly forward's spike."""
    if KERNEL_DTYPES[dtype_name][1] == 4:
        return ""
    above, below = threshold_bracket(dtype_name, v_threshold)
    return (
        "if ((to_f32(hs) >= V_TH) != fire) "
        f"hs = fire ? (elem_t){above:#06x} : (elem_t){below:#06x};"
    )


# --- unfused: one layer over T ---


def unfused_source(dtype_name: str, neuron: str, params: dict, *, bits: int = 32) -> str:
    """CUDA C++ of `{neuron}_forward_w{1,VEC}` and `{neuron}_backward_w{1,VEC}` for one storage
    dtype and parameter set. Tensors are [T, M] contiguous, read as [T, M / w] vectors of w;
    T is the kernels' `steps` argument. Pure: no CuPy, no GPU."""
    title = "LIF" if neuron == "lif" else "PLIF"
    lines = _prelude(title, dtype_name, neuron, params, bits)
    size = KERNEL_DTYPES[dtype_name][1]
    keep_side = _keep_side(dtype_name, params["v_threshold"])
    for w in sorted({1, VEC}):
        lines.append(f"struct __align__({w * size}) vec{w}_t {{ elem_t e[{w}]; }};")
        lines.append(_unfused_forward(neuron, w, _one(dtype_name), keep_side))
        lines.append(_unfused_backward(neuron, w))
    return "\n".join(lines)


def _grid_loop(count: str) -> str:
    return f"""  const idx_t stride = (idx_t)(blockDim.x * gridDim.x);
  for (idx_t i = (idx_t)(blockIdx.x * blockDim.x + threadIdx.x); i < {count}; i += stride) {{"""


def _unfused_forward(neuron: str, w: int, one: str, keep_side: str) -> str:
    device = neuron == "plif"
    chunk = CHUNK[w]
    return f"""
extern "C" __global__ void __launch_bounds__({THREADS}) {neuron}_forward_w{w}(
    const vec{w}_t* __restrict__ x,{" const float* __restrict__ decay," if device else ""}
    vec{w}_t* __restrict__ spike, vec{w}_t* __restrict__ h_out,
    const long long groups, const int steps)
{{
  const float k = {"*decay;  // sigmoid(w), computed on the device by torch" if device else "0.0f;"}
  const idx_t m = (idx_t)groups;
{_grid_loop("m")}
    float v[{w}];
#pragma unroll
    for (int j = 0; j < {w}; ++j) v[j] = RESET;
    for (int t0 = 0; t0 < steps; t0 += {chunk}) {{
      vec{w}_t xs[{chunk}];  // every load of the chunk is issued before the first is used
#pragma unroll
      for (int c = 0; c < {chunk}; ++c)
        if (t0 + c < steps) xs[c] = x[i + (idx_t)(t0 + c) * m];
#pragma unroll
      for (int c = 0; c < {chunk}; ++c) {{
        if (t0 + c >= steps) break;
        vec{w}_t sv, hv;
#pragma unroll
        for (int j = 0; j < {w}; ++j) {{
          const float h = charge(v[j], to_f32(xs[c].e[j]), k);
          const bool fire = h >= V_TH;
          elem_t hs = from_f32(h);
          {keep_side}
          hv.e[j] = hs;
          sv.e[j] = fire ? {one} : (elem_t)0;
          v[j] = fire ? RESET : h;  // hard reset
        }}
        spike[i + (idx_t)(t0 + c) * m] = sv;
        if (h_out) h_out[i + (idx_t)(t0 + c) * m] = hv;  // null when no gradient is needed
      }}
    }}
  }}
}}
"""


def _unfused_backward(neuron: str, w: int) -> str:
    """Reverse over T from h. The PLIF also needs h[t-1] (the membrane before step t is h[t-1]
    unless step t-1 fired, then 0) for its decay's gradient: dL/dk = sum dL/dh (h - v_prev) / k
    ((x - v) k = h - v), summed per neuron group (T * w terms), then into a compensated (Kahan)
    per-thread total, so a thread covering many groups loses no precision."""
    plif = neuron == "plif"
    chunk = CHUNK[w]
    if plif:
        args = f"const float* __restrict__ decay, vec{w}_t* __restrict__ grad_x_out,\n"
        args += "    float* __restrict__ partial,"
    else:
        args = f"vec{w}_t* __restrict__ grad_x_out,"
    total = "\n  float acc = 0.0f, lost = 0.0f;  // this thread's sum of dL/dh (h - v_prev)"
    group = "\n    float group_sum = 0.0f;"
    prev_loads = "        if (t0 - c > 0) hp[c] = h_in[i + (idx_t)(t0 - c - 1) * m];  // h[t-1]\n"
    dk = """
          const float hprev = t > 0 ? to_f32(hp[c].e[j]) : 0.0f;
          const float v_prev = (t == 0 || hprev >= V_TH) ? 0.0f : hprev;
          group_sum = __fadd_rn(group_sum, __fmul_rn(gh, __fsub_rn(h, v_prev)));  // (x - v) k"""
    add_group = """
    const float y = __fsub_rn(group_sum, lost);
    const float sum = __fadd_rn(acc, y);
    lost = __fsub_rn(__fsub_rn(sum, acc), y);
    acc = sum;"""
    write = "\n  partial[(idx_t)(blockIdx.x * blockDim.x + threadIdx.x)] = acc;"
    if not plif:
        total = group = prev_loads = dk = add_group = write = ""
    return f"""
extern "C" __global__ void __launch_bounds__({THREADS}) {neuron}_backward_w{w}(
    const vec{w}_t* __restrict__ grad_spike, const vec{w}_t* __restrict__ h_in,
    {args} const long long groups, const int steps)
{{
  const float k = {"*decay;" if plif else "0.0f;"}
  const idx_t m = (idx_t)groups;{total}
{_grid_loop("m")}
    float gv[{w}];  // dL/dv[t]: what reaches the membrane after step t from step t + 1
#pragma unroll
    for (int j = 0; j < {w}; ++j) gv[j] = 0.0f;{group}
    for (int t0 = steps - 1; t0 >= 0; t0 -= {chunk}) {{
      // steps t0, t0 - 1, ...: every load of the chunk is issued before the first is used
      vec{w}_t gs[{chunk}], hv[{chunk}]{f", hp[{chunk}]" if plif else ""};
#pragma unroll
      for (int c = 0; c < {chunk}; ++c) {{
        if (t0 - c < 0) break;
        gs[c] = grad_spike[i + (idx_t)(t0 - c) * m];
        hv[c] = h_in[i + (idx_t)(t0 - c) * m];
{prev_loads}      }}
#pragma unroll
      for (int c = 0; c < {chunk}; ++c) {{
        const int t = t0 - c;
        if (t < 0) break;
        vec{w}_t gx;
#pragma unroll
        for (int j = 0; j < {w}; ++j) {{
          const float h = to_f32(hv[c].e[j]);
          const float over = __fsub_rn(h, V_TH);
          // detach_reset: the reset passes gradient to h only where no spike (dv/dh = 1 - s)
          const float gh = __fadd_rn(__fmul_rn(to_f32(gs[c].e[j]), surrogate(over)),
                                     over >= 0.0f ? 0.0f : gv[j]);
          const float gxt = grad_x(gh, k);
          gx.e[j] = from_f32(gxt);
          gv[j] = __fsub_rn(gh, gxt);  // dh/dv_prev = 1 - dh/dx, summed as torch sums it{dk}
        }}
        grad_x_out[i + (idx_t)t * m] = gx;
      }}
    }}{add_group}
  }}{write}
}}
"""


# --- fused: BatchNorm-apply + neuron over T + 2x2 max-pool ---

_GEOMETRY = """
    const long long n_batch_, const long long channels_, const long long height_,
    const long long width_, const long long c_fast_,
    const long long ys_n_, const long long ys_c_, const long long ys_h_, const long long ys_w_,
    const long long os_n_, const long long os_c_, const long long os_h_, const long long os_w_"""

_FUSED_COMMON = r"""
// The launch's geometry as idx_t: y is [T*N, C, H, W] with strides ys_*, the pooled tensors
// [T*N, C, H/2, W/2] with strides os_*; one task per (sample, channel, 2x2 window), partial
// windows of an odd H or W included; channel fastest for a channels_last y (coalesced along C).
#define GEOMETRY \
  const idx_t n_batch = (idx_t)n_batch_, channels = (idx_t)channels_, height = (idx_t)height_, \
      width = (idx_t)width_, ys_n = (idx_t)ys_n_, ys_c = (idx_t)ys_c_, ys_h = (idx_t)ys_h_, \
      ys_w = (idx_t)ys_w_, os_n = (idx_t)os_n_, os_c = (idx_t)os_c_, os_h = (idx_t)os_h_, \
      os_w = (idx_t)os_w_; \
  const bool c_fast = c_fast_ != 0; \
  const idx_t rows = (height + 1) / 2, cols = (width + 1) / 2; \
  const idx_t tasks = n_batch * channels * rows * cols;
struct window_t { idx_t n, c, row, col; };
__device__ __forceinline__ window_t window_of(uidx_t i, uidx_t channels, uidx_t rows,
                                               uidx_t cols, bool c_fast) {
  window_t w;  // unsigned division: no sign fix-ups
  if (c_fast) {
    w.c = i % channels; i /= channels; w.col = i % cols; i /= cols; w.row = i % rows;
    w.n = i / rows;
  } else {
    w.col = i % cols; i /= cols; w.row = i % rows; i /= rows; w.c = i % channels;
    w.n = i / channels;
  }
  return w;
}
// A window's four elements in max_pool2d's scan order, their first step's index in y, the
// distance between steps (y is [T*N, ...]: step t of sample n is row t * N + n), and the same
// for the pooled tensors
#define WINDOW \
  const window_t win = window_of(i, channels, rows, cols, c_fast); \
  const idx_t base = win.n * ys_n + win.c * ys_c + 2 * win.row * ys_h + 2 * win.col * ys_w; \
  const idx_t offset[4] = {0, ys_w, ys_h, ys_h + ys_w}; \
  const idx_t step = n_batch * ys_n; \
  const bool pooled = 2 * win.row + 1 < height && 2 * win.col + 1 < width;
#define POOLED_INDEX \
  const idx_t obase = win.n * os_n + win.c * os_c + win.row * os_h + win.col * os_w; \
  const idx_t ostep = n_batch * os_n;
// which of the four elements exist (an odd H or W cuts the last windows)
#define VALID \
  const bool valid[4] = {true, 2 * win.col + 1 < width, 2 * win.row + 1 < height, pooled};
// BatchNorm-apply as torch does on the CPU: scale = invstd * weight,
// shift = bias - mean * scale (one rounding), x = y * scale + shift (one rounding).
// bn is [4, C] float32: mean, invstd, weight, bias.
#define BN_SCALE_SHIFT(bn, c, channels) \
  const float mean = bn[c], invstd = bn[channels + c]; \
  const float scale = __fmul_rn(invstd, bn[2 * channels + c]); \
  const float shift = __fmaf_rn(-mean, scale, bn[3 * channels + c]);
"""


def fused_source(dtype_name: str, steps: int, neuron: str, params: dict, *, bits: int = 32) -> str:
    """CUDA C++ of `fused_forward` and `fused_backward` for one storage dtype, number of steps
    T (compiled in) and neuron. Pure: no CuPy, no GPU."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    lines = _prelude(f"fused BatchNorm + {neuron} + max-pool", dtype_name, neuron, params, bits)
    lines.append(f"#define STEPS {steps}")
    lines.append(f"#define FINISH_CHUNK {FINISH_CHUNK}  // the finish's steps per batch of loads")
    lines += [_FUSED_COMMON, _fused_forward(neuron, _one(dtype_name)), _fused_backward(neuron)]
    return "\n".join(lines)


def _decay_line(neuron: str) -> str:
    """The fused kernels take a decay pointer either way; only the PLIF reads it."""
    if neuron == "plif":
        return "  const float k = *decay;  // sigmoid(w), computed on the device by torch"
    return "  const float k = 0.0f;  // the LIF's decay is baked in\n  (void)decay;"


def _fused_forward(neuron: str, one: str) -> str:
    return f"""
extern "C" __global__ void __launch_bounds__({FUSED_THREADS["fused_forward"]}) fused_forward(
    const elem_t* __restrict__ y, const float* __restrict__ bn, const float* __restrict__ decay,
    elem_t* __restrict__ out,{_GEOMETRY})
{{
  GEOMETRY
{_decay_line(neuron)}
{_grid_loop("tasks")}
    WINDOW
    POOLED_INDEX
    // all T steps' loads are issued before the first is used; a cut window (odd H or W) pools
    // nothing (max_pool2d floors) and loads nothing
    elem_t ys[STEPS][4];
#pragma unroll
    for (int t = 0; t < STEPS; ++t)
#pragma unroll
      for (int p = 0; p < 4; ++p) ys[t][p] = pooled ? y[base + t * step + offset[p]] : (elem_t)0;
    BN_SCALE_SHIFT(bn, win.c, channels)
    float v[4];
#pragma unroll
    for (int p = 0; p < 4; ++p) v[p] = RESET;
#pragma unroll
    for (int t = 0; t < STEPS; ++t) {{
      bool any = false;
#pragma unroll
      for (int p = 0; p < 4; ++p) {{
        const float x = __fmaf_rn(to_f32(ys[t][p]), scale, shift);
        const float h = charge(v[p], x, k);
        const bool fire = h >= V_TH;
        any = any || fire;
        v[p] = fire ? RESET : h;  // hard reset
      }}
      if (pooled) out[obase + t * ostep] = any ? {one} : (elem_t)0;  // max of 0/1 spikes
    }}
  }}
}}
"""


def _fused_backward(neuron: str) -> str:
    plif = neuron == "plif"
    # the PLIF's decay is learned: its gradient's sum over steps, like the channel sums
    w_k = ", w_k[4]" if plif else ""
    w_k0 = "w_k[p] = " if plif else ""
    sum_k0 = ", sum_k = 0.0f" if plif else ""
    w_k_step = (
        "\n        w_k[p] = __fmaf_rn(keep[p], w_k[p], __fsub_rn(x, v[p]));  // dh/dk = x - v_prev"
        if plif
        else ""
    )
    sum_k = "\n        sum_k = __fmaf_rn(r[t], w_k[p], sum_k);" if plif else ""
    write_k = "\n      partial[2 * tasks + i] = sum_k;" if plif else ""
    return f"""
// Two modes, chosen by coef:
// - coef null, the pass: recompute BatchNorm, the membrane over T and the pooling winner from
//   y, run the neuron's backward in reverse, write dL/dx * scale to grad_y (all of dL/dy in eval
//   mode) and each window's partial sums of dL/dx, dL/dx * x_hat (and the PLIF's dL/dh * dh/dk);
// - coef ([2, C]: cb, cd from the channel sums), train mode's finish: grad_y = kept + cb +
//   x_hat * cd, where `kept` (in grad_out's place, y-shaped) is what the pass wrote; each
//   element is read and then written by one thread, so kept may be grad_y itself.
extern "C" __global__ void __launch_bounds__({FUSED_THREADS["fused_backward"]}) fused_backward(
    const elem_t* __restrict__ y, const elem_t* grad_out, const float* __restrict__ bn,
    const float* __restrict__ coef, const float* __restrict__ decay, elem_t* grad_y,
    float* __restrict__ partial,{_GEOMETRY})
{{
  GEOMETRY
{_decay_line(neuron)}
  if (coef) {{  // the finish
{_grid_loop("tasks")}
      WINDOW
      VALID
      BN_SCALE_SHIFT(bn, win.c, channels)
      const float cb = coef[win.c], cd = coef[channels + win.c];
#pragma unroll
      for (int t0 = 0; t0 < STEPS; t0 += FINISH_CHUNK) {{
        elem_t ys[FINISH_CHUNK][4], kept[FINISH_CHUNK][4];  // the chunk's loads, issued first
#pragma unroll
        for (int t = t0; t < t0 + FINISH_CHUNK && t < STEPS; ++t)
#pragma unroll
          for (int p = 0; p < 4; ++p)
            if (valid[p]) {{
              ys[t - t0][p] = y[base + t * step + offset[p]];
              kept[t - t0][p] = grad_out[base + t * step + offset[p]];
            }}
#pragma unroll
        for (int t = t0; t < t0 + FINISH_CHUNK && t < STEPS; ++t)
#pragma unroll
          for (int p = 0; p < 4; ++p)
            if (valid[p]) {{
              const float x_hat = __fmul_rn(__fsub_rn(to_f32(ys[t - t0][p]), mean), invstd);
              grad_y[base + t * step + offset[p]] =
                  from_f32(__fmaf_rn(x_hat, cd, __fadd_rn(to_f32(kept[t - t0][p]), cb)));
            }}
      }}
    }}
    return;
  }}
  const float a = grad_x(1.0f, k), a_rest = __fsub_rn(1.0f, a);  // dh/dx, dh/dv_prev
{_grid_loop("tasks")}
    WINDOW
    POOLED_INDEX
    VALID
    elem_t ys[STEPS][4], gp[STEPS];  // y and the pooled gradient, all loads issued first
#pragma unroll
    for (int t = 0; t < STEPS; ++t) {{
#pragma unroll
      for (int p = 0; p < 4; ++p) ys[t][p] = valid[p] ? y[base + t * step + offset[p]] : (elem_t)0;
      gp[t] = pooled ? grad_out[obase + t * ostep] : (elem_t)0;
    }}
    BN_SCALE_SHIFT(bn, win.c, channels)
    // Forward over T: the membrane, the spikes and, at max_pool2d's winner (the first spiking
    // element in scan order, element 0 when none spikes), r[t] = dL/d(pooled) * ds/dh: all of
    // dL/dh[t] that does not come from step t + 1. Backward's recursion
    // dL/dh[t] = r[t] + m[t] dL/dh[t + 1], m[t] = (1 - s[t]) dh/dv_prev, then gives every
    // sum over steps of dL/dh[t] w[t] as sum r[t] W[t], W[t] = w[t] + m[t - 1] W[t - 1] (forward
    // mode): the window's channel-sum terms need no y in the reverse pass.
    float v[4], keep[4], w_g[4], w_gx[4]{w_k};
#pragma unroll
    for (int p = 0; p < 4; ++p) {{
      v[p] = RESET;
      keep[p] = w_g[p] = w_gx[p] = {w_k0}0.0f;
    }}
    float r[STEPS], sum_g = 0.0f, sum_gx = 0.0f{sum_k0};
    unsigned int fired[(STEPS + 7) / 8];  // 4 bits per step: which elements spiked
#pragma unroll
    for (int t = 0; t < STEPS; ++t) {{
      float h[4];
      unsigned int bits = 0;
#pragma unroll
      for (int p = 0; p < 4; ++p) {{
        const float x = __fmaf_rn(to_f32(ys[t][p]), scale, shift);
        h[p] = charge(v[p], x, k);
        if (!valid[p]) continue;
        const float x_hat = __fmul_rn(__fsub_rn(to_f32(ys[t][p]), mean), invstd);
        w_g[p] = __fmaf_rn(keep[p], w_g[p], a);  // dL/dx = a dL/dh
        w_gx[p] = __fmaf_rn(keep[p], w_gx[p], __fmul_rn(a, x_hat));{w_k_step}
        const bool fire = h[p] >= V_TH;
        bits |= (unsigned int)fire << p;
        keep[p] = fire ? 0.0f : a_rest;  // detach_reset: no gradient through a spike's reset
        v[p] = fire ? RESET : h[p];  // hard reset
      }}
      const int winner = (bits & 1u) ? 0 : (bits & 2u) ? 1 : (bits & 4u) ? 2 : (bits & 8u) ? 3 : 0;
      const float h_win = winner == 0 ? h[0] : winner == 1 ? h[1] : winner == 2 ? h[2] : h[3];
      r[t] = __fmul_rn(to_f32(gp[t]), surrogate(__fsub_rn(h_win, V_TH)));
#pragma unroll
      for (int p = 0; p < 4; ++p) {{
        if (p != winner) continue;
        sum_g = __fmaf_rn(r[t], w_g[p], sum_g);
        sum_gx = __fmaf_rn(r[t], w_gx[p], sum_gx);{sum_k}
      }}
      if (t % 8 == 0) fired[t / 8] = 0;
      fired[t / 8] |= bits << (4 * (t % 8));
    }}
    if (partial) {{
      partial[i] = sum_g;
      partial[tasks + i] = sum_gx;{write_k}
    }}
    float gv[4] = {{0.0f, 0.0f, 0.0f, 0.0f}};  // dL/dv[t] from step t + 1
#pragma unroll
    for (int t = STEPS - 1; t >= 0; --t) {{
      const unsigned int bits = (fired[t / 8] >> (4 * (t % 8))) & 15u;
      const int winner = (bits & 1u) ? 0 : (bits & 2u) ? 1 : (bits & 4u) ? 2 : (bits & 8u) ? 3 : 0;
#pragma unroll
      for (int p = 0; p < 4; ++p) {{
        if (!valid[p]) continue;
        // detach_reset: the reset passes gradient to h only where no spike (dv/dh = 1 - s)
        const float gh = __fadd_rn(p == winner ? r[t] : 0.0f, (bits >> p) & 1u ? 0.0f : gv[p]);
        const float gx = grad_x(gh, k);
        gv[p] = __fsub_rn(gh, gx);  // dh/dv_prev = 1 - dh/dx, summed as torch sums it
        if (grad_y) grad_y[base + t * step + offset[p]] = from_f32(__fmul_rn(gx, scale));
      }}
    }}
  }}
}}
"""


# --- what the kernels move per training step (bench/kernel_report.py) ---

RECIPE = {"batch": 16, "channels": 128, "side": 128, "blocks": 5, "sms": 132}


def _recipe_layers(steps: int, batch: int, channels: int) -> dict[str, list[int]]:
    """Elements per spiking layer of GestureNet ([T, N, ...] sizes): the conv blocks' outputs
    and the two fully connected layers (hidden C*2*2, then 110)."""
    side = RECIPE["side"]
    convs = [steps * batch * channels * (side >> i) ** 2 for i in range(RECIPE["blocks"])]
    return {"conv": convs, "fc": [steps * batch * channels * 4, steps * batch * 110]}


def step_traffic(
    kernel: str, neuron: str, dtype_name: str, steps: int, batch: int = 16, channels: int = 128
) -> int:
    """Bytes `kernel` reads and writes in GPU memory per training step of GestureNet (batch,
    channels, T = steps, 128 x 128 input), counted from its loads and stores. Unfused kernels:
    in the `--cupy` net, where they run every spiking layer (all with 4 neurons per thread);
    fused kernels: in the `--cupy --fused` net (train-mode BatchNorm). Buffers read once by
    every thread (BatchNorm's [4, C], the decay) count once."""
    s = KERNEL_DTYPES[dtype_name][1]
    layers = _recipe_layers(steps, batch, channels)
    if kernel.startswith(("lif_", "plif_")):
        if not kernel.endswith(f"_w{VEC}"):
            return 0  # every layer of the recipe splits into vectors of VEC
        total = 0
        for numel in layers["conv"] + layers["fc"]:
            total += 3 * numel * s  # forward: x, spikes, h; backward: dL/ds, h, dL/dx
            if neuron == "plif" and "backward" in kernel:
                groups = numel // steps // VEC
                blocks = min(-(-groups // THREADS), RECIPE["sms"] * 8)
                total += blocks * THREADS * 4  # the partial sums of dL/dk
        return total
    total = 0
    parts = 3 if neuron == "plif" else 2
    for numel in layers["conv"]:
        windows = numel // steps // 4
        if kernel == "fused_forward":  # y, the pooled spikes
            total += numel * s + numel // 4 * s + 16 * channels
        else:  # the pass: y, dL/d(pooled), kept, partials; the finish: y, kept, dL/dy
            total += (numel + numel // 4 + numel) * s + parts * windows * 4 + 16 * channels
            total += 3 * numel * s + 8 * channels
    return total
