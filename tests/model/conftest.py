"""The g++ harness shared by the kernel tests: generated CUDA source, compiled as C++ for the CPU.

CUDA's built-ins become plain C++ (IEEE float ops, no FMA contraction), fp16 conversion uses
GCC's _Float16 instead of PTX, and the test's `main` plays the grid with loops over blocks and
threads. It runs the kernels' real indexing, vector types and arithmetic on this machine.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dvsgkit.model.kernels import VEC, conversions

CPP_PRELUDE = r"""
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <xmmintrin.h>
// CuPy compiles kernels with -ftz=true: float subnormals flush to zero, inputs and results.
// The SSE unit does the same with FTZ (bit 15) and DAZ (bit 6) set, before main runs.
static const int flush_subnormals = (_mm_setcsr(_mm_getcsr() | 0x8040), 0);
struct dim3_t { long long x; };
static dim3_t blockIdx, threadIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __align__(n) alignas(n)
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline unsigned int __float_as_uint(float f) { unsigned int u; memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(unsigned int u) { float f; memcpy(&f, &u, 4); return f; }
static void* load(const char* path, size_t bytes) {
  void* p = aligned_alloc(64, bytes + 64); FILE* f = fopen(path, "rb");
  if (!f || fread(p, 1, bytes, f) != bytes) { perror(path); exit(2); } fclose(f); return p; }
static void save(const char* path, const void* p, size_t bytes) {
  FILE* f = fopen(path, "wb"); fwrite(p, 1, bytes, f); fclose(f); }
"""
CPP_F16 = """
inline float to_f32(unsigned short u) { _Float16 h; memcpy(&h, &u, 2); return (float)h; }
inline unsigned short from_f32(float f) { _Float16 h = (_Float16)f; unsigned short u;
  memcpy(&u, &h, 2); return u; }
"""


def _storage(t: torch.Tensor) -> torch.Tensor:
    """A dense tensor's elements in memory order (what the kernel sees), as a 1-D view."""
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


class CppHarness:
    """Builds kernel source + a test `main` with g++ (once per name) and moves tensors through
    files in memory order."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.binaries: dict[str, Path] = {}

    def build(self, name: str, source: str, dtype_name: str, main: str) -> Path:
        """`main` may say `wV` / `vecV_t` for the vector width's kernels and type."""
        if name not in self.binaries:
            if dtype_name == "float16":  # PTX cvt -> GCC _Float16 (the only CUDA-only part)
                source = source.replace(conversions("float16"), CPP_F16)
            main = main.replace("wV", f"w{VEC}").replace("vecV_t", f"vec{VEC}_t")
            path = self.folder / f"{name}.cpp"
            path.write_text(CPP_PRELUDE + source.replace('extern "C" ', "") + main)
            exe = self.folder / name
            cmd = ["g++", "-std=c++17", "-O1", "-ffp-contract=off", "-o", str(exe), str(path)]
            result = subprocess.run(cmd, capture_output=True, text=True)
            assert result.returncode == 0, result.stderr
            self.binaries[name] = exe
        return self.binaries[name]

    def file(self, name: str) -> Path:
        return self.folder / f"{name}.bin"

    @staticmethod
    def write(t: torch.Tensor, path: Path) -> None:
        _storage(t.detach()).contiguous().view(torch.uint8).numpy().tofile(path)

    @staticmethod
    def read(path: Path, like: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(like)  # like's strides, as the library's outputs
        raw = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
        _storage(out).copy_(raw.view(like.dtype))
        return out


@pytest.fixture(scope="session")
def cpp_harness(tmp_path_factory: pytest.TempPathFactory) -> CppHarness:
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed (it runs the CUDA kernel source on the CPU)")
    return CppHarness(tmp_path_factory.mktemp("cpp_kernels"))
