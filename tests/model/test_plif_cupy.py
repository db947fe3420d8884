"""The fused CuPy PLIF against the reference loop: the source compiles (nvcc), and the kernels
equal `plif_multistep` in spikes and in the gradients of x and of the decay.

One parity body runs on two back ends: the generated CUDA source compiled by g++ and run on the
CPU (every block and thread in turn), and the real CuPy kernels on a GPU (marked `gpu`).
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dvsgkit.model import plif_cupy
from dvsgkit.model.lif_cupy import VEC, CupyUnavailableError, storage_is_time_major
from dvsgkit.model.net import GestureNet
from dvsgkit.model.plif import MultiStepPLIF, plif_multistep
from dvsgkit.model.plif_cupy import backward_blocks, kernel_source, plif_multistep_cupy

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_kernel_source_compiles_with_nvcc(dtype: str, tmp_path: Path) -> None:
    src = tmp_path / f"plif_{dtype}.cu"
    src.write_text(kernel_source(dtype))
    out = tmp_path / f"plif_{dtype}.cubin"
    cmd = ["nvcc", "-cubin", "-arch=sm_80", "-Werror", "all-warnings", "-o", str(out), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    binary = out.read_bytes()
    for name in ("plif_forward_w1", "plif_forward_w4", "plif_backward_w1", "plif_backward_w4"):
        assert name.encode() in binary


def test_kernel_source_rejects_other_dtypes_and_bakes_the_threshold() -> None:
    assert "#define V_TH 0.5f" in kernel_source("float32", v_threshold=0.5)
    with pytest.raises(ValueError, match="no PLIF kernel for dtype float64"):
        kernel_source("float64")


def test_backward_grid_is_capped_per_sm() -> None:
    assert backward_blocks(10, 132) == 1
    assert backward_blocks(256 * 50, 132) == 50
    assert backward_blocks(537_000_000 // VEC, 132) == 132 * plif_cupy.BLOCKS_PER_SM


def test_unavailable_cupy_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from dvsgkit.model import cupy_runtime

    monkeypatch.setattr(cupy_runtime, "cp", None)
    with pytest.raises(CupyUnavailableError, match="pip install cupy-cuda12x"):
        MultiStepPLIF(backend="cupy")
    with pytest.raises(CupyUnavailableError, match="pip install cupy-cuda12x"):
        GestureNet(4, neuron="plif", backend="cupy")


# The kernels' source through the g++ harness (tests/model/conftest.py), launched like `_launch`
# with the decay passed as an exact hex float and 2 x 3 threads writing 6 partials.
CPP_MAIN = r"""
int main(int argc, char** argv) {  // kind T M w decay in1 in2 out1 out2
  const int steps = atoi(argv[2]); const long long m = atoll(argv[3]); const int w = atoi(argv[4]);
  float decay = strtof(argv[5], nullptr);
  const size_t bytes = (size_t)steps * m * sizeof(elem_t);
  void* a = load(argv[6], bytes); void* b = load(argv[7], bytes);
  void* o1 = aligned_alloc(64, bytes + 64); void* o2 = aligned_alloc(64, bytes + 64);
  const long long groups = m / w;
  blockDim.x = 3; gridDim.x = 2;  // a small grid, so the grid-stride loop runs too
  float partial[6];
  const char k = argv[1][0];
  for (blockIdx.x = 0; blockIdx.x < gridDim.x; ++blockIdx.x)
    for (threadIdx.x = 0; threadIdx.x < blockDim.x; ++threadIdx.x) {
      if (k == 'f' && w == 1)
        plif_forward_w1((vec1_t*)a, &decay, (vec1_t*)o1, (vec1_t*)o2, groups, steps);
      if (k == 'f' && w != 1)
        plif_forward_wV((vecV_t*)a, &decay, (vecV_t*)o1, (vecV_t*)o2, groups, steps);
      if (k == 'b' && w == 1)
        plif_backward_w1((vec1_t*)a, (vec1_t*)b, &decay, (vec1_t*)o1, partial, groups, steps);
      if (k == 'b' && w != 1)
        plif_backward_wV((vecV_t*)a, (vecV_t*)b, &decay, (vecV_t*)o1, partial, groups, steps);
    }
  save(argv[8], o1, bytes);
  if (k == 'f') save(argv[9], o2, bytes); else save(argv[9], partial, sizeof(partial));
  return 0; }
"""


class CppPLIF:
    """The PLIF kernel source per dtype, built by the g++ harness and run like `_launch`."""

    def __init__(self, harness) -> None:
        self.harness = harness

    def run(self, kind: str, a: torch.Tensor, b: torch.Tensor, decay: float):
        h = self.harness
        steps, m = a.shape[0], a.numel() // a.shape[0]
        w = VEC if m % VEC == 0 else 1
        files = [h.file(f"plif_{n}") for n in ("a", "b", "o1", "o2")]
        h.write(a, files[0])
        h.write(b, files[1])
        dtype_name = str(a.dtype).removeprefix("torch.")
        exe = h.build(f"plif_{dtype_name}", kernel_source(dtype_name), dtype_name, CPP_MAIN)
        hex_decay = float(np.float32(decay)).hex()
        args = [str(exe), kind, str(steps), str(m), str(w), hex_decay, *map(str, files)]
        subprocess.run(args, check=True)
        if kind == "f":
            return [h.read(files[2], a), h.read(files[3], a)]
        return [h.read(files[2], a), torch.from_numpy(np.fromfile(files[3], dtype=np.float32))]


class CppFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, decay: torch.Tensor, kernels: CppPLIF) -> torch.Tensor:
        spike, h = kernels.run("f", x, x, float(decay))
        ctx.save_for_backward(h, decay)
        ctx.kernels = kernels
        return spike

    @staticmethod
    def backward(ctx, grad_spike: torch.Tensor):
        h, decay = ctx.saved_tensors
        if grad_spike.stride() != h.stride():
            grad_spike = torch.empty_like(h).copy_(grad_spike)
        grad_x, partial = ctx.kernels.run("b", grad_spike, h, float(decay))
        return grad_x, partial.sum() / decay, None


@pytest.fixture(scope="module")
def cpp_plif(cpp_harness) -> CppPLIF:
    return CppPLIF(cpp_harness)


@pytest.fixture
def fused(request: pytest.FixtureRequest) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The fused PLIF under test: "cpp" (the kernel source on the CPU) or "cupy" (GPU)."""
    if request.param == "cupy":
        return plif_multistep_cupy
    kernels = request.getfixturevalue("cpp_plif")

    def run(x_seq: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
        x = x_seq if storage_is_time_major(x_seq) else x_seq.contiguous()
        return CppFunction.apply(x, decay.reshape(()).float(), kernels)

    return run


FUSED = [
    pytest.param("cpp", "cpu", id="kernel-source-cpu"),
    pytest.param("cupy", "cuda", id="cupy-cuda", marks=pytest.mark.gpu),
]
SHAPES = [(20, 2, 4, 8, 8), (7, 3, 7, 11), (1, 1), (3, 2, 5)]  # vector path, odd sizes, tiny
TOL_X = {
    torch.float32: {"rtol": 1e-6, "atol": 1e-7},
    torch.float16: {"rtol": 1e-2, "atol": 2e-3},
    torch.bfloat16: {"rtol": 4e-2, "atol": 1e-2},
}
# dL/dk sums thousands of terms; 16-bit storage of h rounds each term's (h - v_prev)
TOL_K = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def plif_inputs(shape: tuple[int, ...], dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g) * 3 - 0.5
    x.view(-1)[::7] = 2.0  # with k = 1/2, from rest h = 1.0 exactly: fires (>=)
    grad = torch.randint(-8, 9, shape, generator=g) / 8
    return x.to(device, dtype), grad.to(device, dtype)


@pytest.mark.parametrize(("fused", "device"), FUSED, indirect=["fused"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("w", [0.0, -0.9, 1.3])
def test_fused_plif_matches_reference(fused, device: str, dtype, shape, w: float) -> None:
    x, grad = plif_inputs(shape, dtype, device)
    w_fused = torch.tensor(w, device=device, requires_grad=True)
    x_fused = x.clone().requires_grad_(True)
    spikes = fused(x_fused, w_fused.sigmoid())
    spikes.backward(grad)
    # fp32 math on the stored inputs: the fp32 reference on the same values, same spikes
    w_ref = torch.tensor(w, device=device, requires_grad=True)
    x_ref = x.float().clone().requires_grad_(True)
    ref = plif_multistep(x_ref, w_ref.sigmoid())
    ref.backward(grad.float())
    assert spikes.dtype == dtype and spikes.shape == x.shape
    assert torch.equal(spikes.float(), ref), "spikes differ"
    assert ref.numel() < 8 or (ref.sum() > 0 and (ref == 0).any())
    assert x_fused.grad.dtype == dtype
    torch.testing.assert_close(x_fused.grad.float(), x_ref.grad, **TOL_X[dtype])
    scale = float(grad.float().abs().sum() * x.float().abs().max()) / math.sqrt(x.numel())
    torch.testing.assert_close(
        w_fused.grad, w_ref.grad, rtol=TOL_K[dtype], atol=TOL_K[dtype] * scale * 1e-2
    )


@pytest.mark.parametrize(("fused", "device"), FUSED, indirect=["fused"])
def test_fused_plif_keeps_channels_last_layout_and_handles_offsets(fused, device: str) -> None:
    x5, grad5 = plif_inputs((3, 2, 8, 4, 4), torch.float32, device, seed=1)
    xc = x5.flatten(0, 1).to(memory_format=torch.channels_last).unflatten(0, (3, 2))
    xc.requires_grad_(True)
    decay = torch.tensor(0.3, device=device, requires_grad=True)
    spikes = fused(xc, decay)
    spikes.backward(grad5)
    x_ref, d_ref = x5.clone().requires_grad_(True), torch.tensor(0.3, requires_grad=True)
    plif_multistep(x_ref, d_ref.to(device)).backward(grad5)
    assert torch.equal(spikes, plif_multistep(x5, torch.tensor(0.3, device=device)))
    assert spikes.stride() == xc.stride() and xc.grad.stride() == xc.stride()
    torch.testing.assert_close(xc.grad, x_ref.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(decay.grad, d_ref.grad.to(device), rtol=1e-4, atol=1e-5)
    base = torch.zeros(x5.numel() + 1, device=device)
    base[1:] = x5.flatten()  # a data pointer that is not 16-byte aligned
    offset = fused(base[1:].view(x5.shape), torch.tensor(0.3, device=device))
    assert torch.equal(offset, plif_multistep(x5, torch.tensor(0.3, device=device)))


@pytest.mark.gpu
def test_cupy_plif_gradient_reaches_w_alone_and_x_alone() -> None:
    x, grad = plif_inputs((6, 2, 40), torch.float32, "cuda")
    w = torch.tensor(-0.4, device="cuda", requires_grad=True)
    plif_multistep_cupy(x, w.sigmoid()).backward(grad)  # x needs no gradient, w does
    w_ref = torch.tensor(-0.4, device="cuda", requires_grad=True)
    plif_multistep(x, w_ref.sigmoid()).backward(grad)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-4, atol=1e-6)
    xg = x.clone().requires_grad_(True)
    plif_multistep_cupy(xg, torch.tensor(0.4, device="cuda")).backward(grad)  # decay fixed
    x_ref = x.clone().requires_grad_(True)
    plif_multistep(x_ref, torch.tensor(0.4, device="cuda")).backward(grad)
    torch.testing.assert_close(xg.grad, x_ref.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.gpu
def test_cupy_plif_inference_decay_on_device_and_errors() -> None:
    x, _ = plif_inputs((8, 3, 33), torch.float16, "cuda")
    layer = MultiStepPLIF(init_tau=3.0, backend="cupy").cuda()
    with torch.no_grad():
        expected = plif_multistep(x.float(), layer.w.sigmoid())
        assert torch.equal(layer(x).float(), expected)
    with pytest.raises(ValueError, match="one CUDA device"):
        plif_multistep_cupy(x, torch.tensor(0.5))
    assert plif_multistep_cupy(torch.zeros(4, 0, 3, device="cuda"), layer.w.sigmoid()).shape == (
        4,
        0,
        3,
    )


@pytest.mark.parametrize(("fused", "device"), FUSED, indirect=["fused"])
def test_decay_gradient_keeps_float32_precision_when_a_thread_covers_many_groups(
    fused, device: str
) -> None:
    # 8000 neuron groups x 16 steps over 6 harness threads (or a capped GPU grid): a plain
    # running sum per thread drifts by ~1e-4 here, the per-group + compensated sum does not.
    x, _ = plif_inputs((16, 4, 2000), torch.float32, device, seed=3)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device)
    w, w_ref = (torch.tensor(0.0, device=device, requires_grad=True) for _ in range(2))
    fused(x, w.sigmoid()).backward(grad)
    plif_multistep(x, w_ref.sigmoid()).backward(grad)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=0)
