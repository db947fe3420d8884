"""What every kernel source shares: storage types and their float32 conversions, the launch
shapes, the index width, and the prelude that puts the neuron's device functions in front of
the kernels."""

from __future__ import annotations

import functools

import numpy as np
import torch

from dvsgkit.model.kernels.neuron import neuron_code, neuron_defines

# storage dtype -> (C storage type, bytes per element)
KERNEL_DTYPES: dict[str, tuple[str, int]] = {
    "float32": ("float", 4),
    "float16": ("unsigned short", 2),  # IEEE half bits, converted with PTX cvt (no headers)
    "bfloat16": ("unsigned short", 2),  # the top 16 bits of a float32
}
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


def prelude(title: str, dtype_name: str, neuron: str, params: dict, bits: int) -> list[str]:
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
    lines += neuron_defines(neuron, params)
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


def spike_one(dtype_name: str) -> str:
    """A spike (1.0) in the storage type."""
    return {"float32": "1.0f", "float16": "(elem_t)0x3c00", "bfloat16": "0x3f80"}[dtype_name]


def keep_side(dtype_name: str, v_threshold: float) -> str:
    """Rounding h to 16 bits may cross the threshold; store the nearest value on the side that
    forward fired on, so backward recomputes exactly forward's spike."""
    if KERNEL_DTYPES[dtype_name][1] == 4:
        return ""
    above, below = threshold_bracket(dtype_name, v_threshold)
    return (
        "if ((to_f32(hs) >= V_TH) != fire) "
        f"hs = fire ? (elem_t){above:#06x} : (elem_t){below:#06x};"
    )


def grid_loop(count: str) -> str:
    """A grid-stride loop over `count` tasks, index i (its body and closing brace follow)."""
    return f"""  const idx_t stride = (idx_t)(blockDim.x * gridDim.x);
  for (idx_t i = (idx_t)(blockIdx.x * blockDim.x + threadIdx.x); i < {count}; i += stride) {{"""
