"""The unfused kernels: one spiking layer over T on a `[T, M]` tensor, w neurons per thread.

`{neuron}_forward_w{1,VEC}` writes the spikes and the charged membrane h;
`{neuron}_backward_w{1,VEC}` runs over T in reverse from h alone. Each thread issues the loads of
CHUNK time steps before it uses the first."""

from __future__ import annotations

from dvsgkit.model.kernels.prelude import (
    CHUNK,
    KERNEL_DTYPES,
    THREADS,
    VEC,
    grid_loop,
    keep_side,
    prelude,
    spike_one,
)


def unfused_source(dtype_name: str, neuron: str, params: dict, *, bits: int = 32) -> str:
    """CUDA C++ of `{neuron}_forward_w{1,VEC}` and `{neuron}_backward_w{1,VEC}` for one storage
    dtype and parameter set. Tensors are [T, M] contiguous, read as [T, M / w] vectors of w;
    T is the kernels' `steps` argument. Pure: no CuPy, no GPU."""
    title = "LIF" if neuron == "lif" else "PLIF"
    lines = prelude(title, dtype_name, neuron, params, bits)
    size = KERNEL_DTYPES[dtype_name][1]
    side = keep_side(dtype_name, params["v_threshold"])
    for w in sorted({1, VEC}):
        lines.append(f"struct __align__({w * size}) vec{w}_t {{ elem_t e[{w}]; }};")
        lines.append(_forward(neuron, w, spike_one(dtype_name), side))
        lines.append(_backward(neuron, w))
    return "\n".join(lines)


def _forward(neuron: str, w: int, one: str, side: str) -> str:
    """Over T from rest: the spikes and h (`side`: the 16-bit threshold fix of `keep_side`)."""
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
{grid_loop("m")}
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
          {side}
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


def _backward(neuron: str, w: int) -> str:
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
{grid_loop("m")}
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
