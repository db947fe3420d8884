"""The fused kernels of a conv block's tail: BatchNorm-apply + neuron over T + 2x2 max-pool, one
thread per pooling window, T compiled in (STEPS).

`fused_forward` issues all T steps' loads of its window before it uses the first.
`fused_backward` runs in one of two modes: the pass (recompute the trajectory from y, the
neuron's backward in reverse, the window's partial sums for BatchNorm's gradient) and train
mode's finish (BatchNorm's channel terms added in place)."""

from __future__ import annotations

from dvsgkit.model.kernels.prelude import (
    FINISH_CHUNK,
    FUSED_THREADS,
    grid_loop,
    prelude,
    spike_one,
)

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
    lines = prelude(f"fused BatchNorm + {neuron} + max-pool", dtype_name, neuron, params, bits)
    lines.append(f"#define STEPS {steps}")
    lines.append(f"#define FINISH_CHUNK {FINISH_CHUNK}  // the finish's steps per batch of loads")
    lines += [_FUSED_COMMON, _forward(neuron, spike_one(dtype_name)), _backward(neuron)]
    return "\n".join(lines)


def _decay_line(neuron: str) -> str:
    """The fused kernels take a decay pointer either way; only the PLIF reads it."""
    if neuron == "plif":
        return "  const float k = *decay;  // sigmoid(w), computed on the device by torch"
    return "  const float k = 0.0f;  // the LIF's decay is baked in\n  (void)decay;"


def _forward(neuron: str, one: str) -> str:
    """BatchNorm-apply, the neuron over T and the pooled spikes, one window per thread."""
    return f"""
extern "C" __global__ void __launch_bounds__({FUSED_THREADS["fused_forward"]}) fused_forward(
    const elem_t* __restrict__ y, const float* __restrict__ bn, const float* __restrict__ decay,
    elem_t* __restrict__ out,{_GEOMETRY})
{{
  GEOMETRY
{_decay_line(neuron)}
{grid_loop("tasks")}
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


def _backward(neuron: str) -> str:
    """The pass (the trajectory recomputed from y, the neuron's backward once in reverse) and
    train mode's finish, one kernel: the pass writes what the finish completes in place."""
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
{_finish()}
  const float a = grad_x(1.0f, k), a_rest = __fsub_rn(1.0f, a);  // dh/dx, dh/dv_prev
{grid_loop("tasks")}
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
{_forward_sums(neuron)}
{_reverse()}
  }}
}}
"""


def _finish() -> str:
    """Train mode's finish: grad_y = kept + cb + x_hat * cd, FINISH_CHUNK steps' loads at once."""
    return f"""  if (coef) {{  // the finish
{grid_loop("tasks")}
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
  }}"""


def _forward_sums(neuron: str) -> str:
    """The pass's forward over T: the membrane, the spikes, r[t] at the pooling winner and the
    window's channel-sum terms (the PLIF's decay is learned: its gradient's sum too)."""
    plif = neuron == "plif"
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
    return f"""\
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
    }}"""


def _reverse() -> str:
    """The pass's reverse over T from the kept spikes and r[t]: dL/dx * scale into grad_y."""
    return """    float gv[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // dL/dv[t] from step t + 1
#pragma unroll
    for (int t = STEPS - 1; t >= 0; --t) {
      const unsigned int bits = (fired[t / 8] >> (4 * (t % 8))) & 15u;
      const int winner = (bits & 1u) ? 0 : (bits & 2u) ? 1 : (bits & 4u) ? 2 : (bits & 8u) ? 3 : 0;
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        if (!valid[p]) continue;
        // detach_reset: the reset passes gradient to h only where no spike (dv/dh = 1 - s)
        const float gh = __fadd_rn(p == winner ? r[t] : 0.0f, (bits >> p) & 1u ? 0.0f : gv[p]);
        const float gx = grad_x(gh, k);
        gv[p] = __fsub_rn(gh, gx);  // dh/dv_prev = 1 - dh/dx, summed as torch sums it
        if (grad_y) grad_y[base + t * step + offset[p]] = from_f32(__fmul_rn(gx, scale));
      }
    }"""
