"""The fused CuPy LIF against the reference loop: source compiles (nvcc), kernel == reference.

The parity checks have one body each. On CPU they run a torch transcription of the kernels'
algorithm (16-bit storage of h included), which checks the backward derivation the kernels
implement; on a GPU (marked `gpu`) the same bodies run the real CuPy kernels.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dvsgkit.model import cupy_runtime, lif_cupy
from dvsgkit.model.lif import TAU, V_RESET, V_THRESHOLD, lif_multistep, surrogate_grad
from dvsgkit.model.lif_cupy import (
    VEC,
    CupyUnavailableError,
    kernel_source,
    lif_multistep_cupy,
    readable_kernel_error,
    storage_is_time_major,
    threshold_bracket,
)
from dvsgkit.model.net import GestureNet

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_kernel_source_compiles_with_nvcc(dtype: str, tmp_path: Path) -> None:
    src = tmp_path / f"lif_{dtype}.cu"
    src.write_text(kernel_source(dtype, tau=2.0, v_threshold=1.0, v_reset=0.0, alpha=2.0))
    out = tmp_path / f"lif_{dtype}.cubin"
    cmd = ["nvcc", "-cubin", "-arch=sm_80", "-Werror", "all-warnings", "-o", str(out), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0
    binary = out.read_bytes()
    for name in ("lif_forward_w1", "lif_forward_w4", "lif_backward_w1", "lif_backward_w4"):
        assert name.encode() in binary


def test_kernel_source_bakes_parameters_and_rejects_other_dtypes() -> None:
    src = kernel_source("float32", tau=3.0, v_threshold=0.5, v_reset=-0.25, alpha=4.0)
    for line in ("#define TAU 3.0f", "#define V_TH 0.5f", "#define V_RESET -0.25f"):
        assert line in src
    assert "#define HALF_ALPHA 2.0f" in src
    with pytest.raises(ValueError, match="no LIF kernel for dtype float64"):
        kernel_source("float64")
    with pytest.raises(ValueError, match="must be finite"):
        kernel_source("float32", tau=float("inf"))


def test_threshold_bracket_is_the_nearest_16_bit_pair_around_the_threshold() -> None:
    assert threshold_bracket("float16", 1.0) == (0x3C00, 0x3BFF)  # 1.0, 1 - 2^-11
    assert threshold_bracket("bfloat16", 1.0) == (0x3F80, 0x3F7F)  # 1.0, 1 - 2^-8
    above, below = threshold_bracket("float16", 0.1)  # 0.1 is not a half: bracket it
    as_half = torch.tensor([above, below], dtype=torch.int32).to(torch.int16).view(torch.float16)
    low, high = as_half[1].item(), as_half[0].item()  # as Python floats, not compared in fp16
    assert low < float(torch.tensor(0.1, dtype=torch.float32)) <= high
    assert (high - low) < 1e-4


def test_unavailable_cupy_names_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cupy_runtime, "cp", None)
    reason = lif_cupy.cupy_unavailable_reason()
    assert reason is not None and "cupy-cuda12x" in reason and "backend='torch'" in reason
    with pytest.raises(CupyUnavailableError, match=r"pip install cupy-cuda12x"):
        GestureNet(4, backend="cupy")
    with pytest.raises(CupyUnavailableError, match="CuPy is not installed"):
        lif_multistep_cupy(torch.zeros(2, 3))


def test_kernel_errors_become_one_readable_line() -> None:
    raw = RuntimeError("nvrtc: error: invalid value for --gpu-architecture (-arch)\n" + "x" * 5000)
    err = readable_kernel_error(raw, "float16")
    assert "invalid value for --gpu-architecture" in str(err)
    assert "cupy-cuda12x" in str(err) and "x" * 100 not in str(err)


class EmulatedKernel(torch.autograd.Function):
    """The kernels' algorithm in torch (fp32 math, h stored in the input dtype on the side of
    the threshold that forward fired on, backward by the hand-derived recursion)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        v = torch.full_like(x[0], V_RESET, dtype=torch.float32)
        spikes, hs = [], []
        above, below = (
            threshold_bracket(str(x.dtype).removeprefix("torch."), V_THRESHOLD)
            if x.element_size() == 2
            else (None, None)
        )
        for t in range(x.shape[0]):
            h = v + (x[t].float() - (v - V_RESET)) / TAU
            fire = h >= V_THRESHOLD
            stored = h.to(x.dtype)
            if above is not None:
                bits = torch.tensor([above, below], dtype=torch.int32).to(torch.int16)
                up, down = bits.view(x.dtype).to(x.device)
                crossed = (stored.float() >= V_THRESHOLD) != fire
                stored = torch.where(crossed & fire, up, torch.where(crossed, down, stored))
            spikes.append(fire.to(x.dtype))
            hs.append(stored)
            v = torch.where(fire, torch.full_like(h, V_RESET), h)
        ctx.save_for_backward(torch.stack(hs))
        return torch.stack(spikes)

    @staticmethod
    def backward(ctx, grad_spike: torch.Tensor) -> torch.Tensor:
        (h_seq,) = ctx.saved_tensors
        gv = torch.zeros_like(h_seq[0], dtype=torch.float32)
        grad_x = torch.empty_like(h_seq)
        for t in reversed(range(h_seq.shape[0])):
            over = h_seq[t].float() - V_THRESHOLD
            gh = grad_spike[t].float() * surrogate_grad(over) + torch.where(over >= 0, 0.0, gv)
            gxt = gh / TAU
            grad_x[t] = gxt.to(h_seq.dtype)
            gv = gh - gxt
        return grad_x


def emulated(x_seq: torch.Tensor) -> torch.Tensor:
    return EmulatedKernel.apply(x_seq.reshape(x_seq.shape[0], -1)).view(x_seq.shape)


# The kernels' source through the g++ harness (tests/model/conftest.py), launched like `_launch`.
CPP_MAIN = r"""
int main(int argc, char** argv) {  // kind T M w in1 in2 out1 [out2]
  const int steps = atoi(argv[2]); const long long m = atoll(argv[3]); const int w = atoi(argv[4]);
  const size_t bytes = (size_t)steps * m * sizeof(elem_t);
  void* a = load(argv[5], bytes); void* b = load(argv[6], bytes);
  void* o1 = aligned_alloc(64, bytes + 64); void* o2 = aligned_alloc(64, bytes + 64);
  const long long groups = m / w;
  blockDim.x = 3; gridDim.x = 2;  // a small grid, so the grid-stride loop runs too
  const char k = argv[1][0];
  for (blockIdx.x = 0; blockIdx.x < gridDim.x; ++blockIdx.x)
    for (threadIdx.x = 0; threadIdx.x < blockDim.x; ++threadIdx.x) {
      if (k == 'f' && w == 1) lif_forward_w1((vec1_t*)a, (vec1_t*)o1, (vec1_t*)o2, groups, steps);
      if (k == 'f' && w != 1) lif_forward_wV((vecV_t*)a, (vecV_t*)o1, (vecV_t*)o2, groups, steps);
      if (k == 'b' && w == 1) lif_backward_w1((vec1_t*)a, (vec1_t*)b, (vec1_t*)o1, groups, steps);
      if (k == 'b' && w != 1) lif_backward_wV((vecV_t*)a, (vecV_t*)b, (vecV_t*)o1, groups, steps);
    }
  save(argv[7], o1, bytes);
  if (argc > 8) save(argv[8], o2, bytes);
  return 0; }
"""


class CppKernels:
    """The LIF kernel source per dtype, built by the g++ harness and run like `_launch`."""

    def __init__(self, harness) -> None:
        self.harness = harness

    def run(self, kind: str, a: torch.Tensor, b: torch.Tensor, outs: int) -> list[torch.Tensor]:
        h = self.harness
        steps = a.shape[0]
        m = a.numel() // steps
        w = VEC if m % VEC == 0 else 1
        files = [h.file(f"lif_{name}") for name in ("a", "b", "o1", "o2")]
        h.write(a, files[0])
        h.write(b, files[1])
        dtype_name = str(a.dtype).removeprefix("torch.")
        exe = h.build(f"lif_{dtype_name}", kernel_source(dtype_name), dtype_name, CPP_MAIN)
        args = [str(exe), kind, str(steps), str(m), str(w), *map(str, files[: 2 + outs])]
        subprocess.run(args, check=True)
        return [h.read(f, a) for f in files[2 : 2 + outs]]


class CppLIF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, kernels: CppKernels) -> torch.Tensor:
        spike, h = kernels.run("f", x, x, outs=2)
        ctx.save_for_backward(h)
        ctx.kernels = kernels
        return spike

    @staticmethod
    def backward(ctx, grad_spike: torch.Tensor):
        (h,) = ctx.saved_tensors
        if grad_spike.stride() != h.stride():  # as the library: the gradient in h's layout
            grad_spike = torch.empty_like(h).copy_(grad_spike)
        (grad_x,) = ctx.kernels.run("b", grad_spike, h, outs=1)
        return grad_x, None


@pytest.fixture(scope="module")
def cpp_kernels(cpp_harness) -> CppKernels:
    return CppKernels(cpp_harness)


def cpp_lif(kernels: CppKernels) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x_seq: torch.Tensor) -> torch.Tensor:  # the layout choice of lif_multistep_cupy
        x = x_seq if storage_is_time_major(x_seq) else x_seq.contiguous()
        return CppLIF.apply(x, kernels)

    return run


@pytest.fixture
def fused(request: pytest.FixtureRequest) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fused LIF under test: "emulated" (torch transcription), "cpp" (the kernel source
    on the CPU) or "cupy" (the real kernels on a GPU)."""
    kind = request.param
    if kind == "emulated":
        return emulated
    if kind == "cpp":
        return cpp_lif(request.getfixturevalue("cpp_kernels"))
    return lif_multistep_cupy


FUSED = [
    pytest.param("emulated", "cpu", id="emulated-cpu"),
    pytest.param("cpp", "cpu", id="kernel-source-cpu"),
    pytest.param("cupy", "cuda", id="cupy-cuda", marks=pytest.mark.gpu),
]
SHAPES = [(16, 2, 4, 8, 8), (5, 3, 7, 11), (1, 1), (3, 2, 5)]  # vector path, odd sizes, tiny
TOL = {  # gradients: 16-bit storage of h and grad_x costs a few ulps of that dtype
    torch.float32: {"rtol": 1e-6, "atol": 1e-7},
    torch.float16: {"rtol": 1e-2, "atol": 2e-3},
    torch.bfloat16: {"rtol": 4e-2, "atol": 1e-2},
}


def lif_inputs(shape: tuple[int, ...], dtype: torch.dtype, device: str, seed: int = 0):
    """Inputs in the input dtype (some exactly at the threshold's reach) and an upstream
    gradient exactly representable in every dtype."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g) * 3 - 0.5
    x.view(-1)[::7] = 2.0  # from rest, h = 1.0 exactly: fires (>=)
    grad = torch.randint(-8, 9, shape, generator=g) / 8
    return x.to(device, dtype), grad.to(device, dtype)


@pytest.mark.parametrize(("fused", "device"), FUSED, indirect=["fused"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fused_lif_matches_reference(fused, device: str, dtype: torch.dtype, shape) -> None:
    x, grad = lif_inputs(shape, dtype, device)
    x_fused = x.clone().requires_grad_(True)
    spikes = fused(x_fused)
    spikes.backward(grad)
    # The kernels compute in fp32 from the stored inputs: the fp32 reference on the same
    # values must give identical spikes.
    x_ref = x.float().clone().requires_grad_(True)
    ref = lif_multistep(x_ref)
    ref.backward(grad.float())
    assert spikes.dtype == dtype and spikes.shape == x.shape
    assert torch.equal(spikes.float(), ref), "spikes differ"
    assert ref.sum() > 0 and (ref.numel() < 8 or (ref == 0).any())
    torch.testing.assert_close(spikes.float().mean(0), ref.mean(0), rtol=0, atol=0)  # rates
    assert x_fused.grad.dtype == dtype
    torch.testing.assert_close(x_fused.grad.float(), x_ref.grad, **TOL[dtype])


def test_storage_is_time_major_accepts_dense_steps_in_any_inner_order() -> None:
    x = torch.zeros(4, 3, 5, 6, 7)  # [T, N, C, H, W]
    channels_last = torch.zeros(12, 5, 6, 7).to(memory_format=torch.channels_last)
    assert storage_is_time_major(x)
    assert storage_is_time_major(channels_last.unflatten(0, (4, 3)))
    assert storage_is_time_major(x[:1].expand(1, 3, 5, 6, 7))
    assert storage_is_time_major(torch.zeros(4, 1, 5).transpose(1, 2))  # size-1 dims are free
    assert not storage_is_time_major(x.transpose(0, 1))  # T not outermost
    assert not storage_is_time_major(x[:, :, ::2])  # gaps
    assert not storage_is_time_major(torch.zeros(4, 3, 5)[:, :2])  # gaps between steps
    assert not storage_is_time_major(torch.zeros(4, 0, 5))


@pytest.mark.parametrize(("fused", "device"), FUSED, indirect=["fused"])
def test_fused_lif_handles_strided_misaligned_and_channels_last_inputs(fused, device: str) -> None:
    x, grad = lif_inputs((6, 4, 10), torch.float32, device)
    base = torch.zeros(x.numel() + 1, device=device)
    base[1:] = x.flatten()
    cases = {
        "transposed": x.transpose(1, 2).contiguous().transpose(1, 2),  # non-contiguous
        "offset": base[1:].view(x.shape),  # data pointer not 16-byte aligned
    }
    for name, xc in cases.items():
        assert torch.equal(fused(xc), lif_multistep(x)), name
    # Convolution outputs in channels_last, unflattened to [T, N, C, H, W]: no copy, the
    # outputs and the input gradient keep that layout.
    x5, grad5 = lif_inputs((3, 2, 8, 4, 4), torch.float32, device, seed=1)
    xc = x5.flatten(0, 1).to(memory_format=torch.channels_last).unflatten(0, (3, 2))
    xc.requires_grad_(True)
    spikes = fused(xc)
    spikes.backward(grad5)
    x_ref = x5.clone().requires_grad_(True)
    lif_multistep(x_ref).backward(grad5)
    assert torch.equal(spikes, lif_multistep(x5))
    torch.testing.assert_close(xc.grad, x_ref.grad, rtol=1e-6, atol=1e-7)
    if fused is not emulated:  # the transcription reshapes; the kernels keep the layout
        assert spikes.stride() == xc.stride() and xc.grad.stride() == xc.stride()


@pytest.mark.parametrize(("fused", "device"), FUSED, indirect=["fused"])
@pytest.mark.parametrize(("dtype", "mantissa"), [(torch.float16, 10), (torch.bfloat16, 7)])
def test_h_rounded_onto_the_threshold_keeps_the_spike_decision(
    fused, device: str, dtype: torch.dtype, mantissa: int
) -> None:
    # From rest, x = 2^-m then 2 - 2^-m give h = 1 - 2^-(m+2) in fp32: no spike, but that h
    # rounds to 1.0 in the 16-bit dtype. Backward must still see "no spike" at t = 1, so the
    # membrane gradient from t = 2 flows into t = 1.
    x = torch.tensor([2.0**-mantissa, 2.0 - 2.0**-mantissa, 0.0], dtype=dtype).view(3, 1)
    x = x.to(device).requires_grad_(True)
    spikes = fused(x)
    spikes.sum().backward()
    x_ref = x.detach().float().requires_grad_(True)
    lif_multistep(x_ref).sum().backward()
    assert spikes.flatten().tolist() == [0.0, 0.0, 0.0]
    torch.testing.assert_close(x.grad.float(), x_ref.grad, **TOL[dtype])


@pytest.mark.gpu
def test_cupy_inference_path_and_empty_input() -> None:
    x, _ = lif_inputs((8, 3, 33), torch.float16, "cuda")
    with torch.no_grad():
        assert torch.equal(lif_multistep_cupy(x).float(), lif_multistep(x.float()))
    empty = torch.zeros(4, 0, 3, device="cuda")
    assert lif_multistep_cupy(empty).shape == (4, 0, 3)


@pytest.mark.gpu
def test_cupy_kernel_compile_failure_is_readable(monkeypatch: pytest.MonkeyPatch) -> None:
    lif_cupy._kernels.cache_clear()
    monkeypatch.setattr(lif_cupy, "kernel_source", lambda *a, **k: "this is not CUDA C++")
    with pytest.raises(lif_cupy.CupyKernelError, match=r"float32 LIF kernel .*NVRTC .*cupy-cuda"):
        lif_multistep_cupy(torch.ones(2, 3, device="cuda", dtype=torch.float32) * 0.123)
    lif_cupy._kernels.cache_clear()


def test_the_harness_flushes_subnormals_as_cupy_compiles_the_kernels(cpp_kernels) -> None:
    # CuPy adds -ftz=true to every compile: a subnormal float32 input charges nothing. The
    # harness models that; torch's reference keeps the subnormal (h = x / tau).
    tiny = torch.finfo(torch.float32).tiny  # the smallest normal float
    x = torch.tensor([[tiny / 4, tiny * 4, 1.5]])  # [T=1, 3]: subnormal, normal, normal
    spike, h = cpp_kernels.run("f", x, x, outs=2)
    assert spike.tolist() == [[0.0, 0.0, 0.0]]
    assert h.tolist() == [[0.0, tiny * 2, 0.75]]
