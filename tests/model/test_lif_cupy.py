"""The fused CuPy LIF against the reference loop: source compiles (nvcc), kernel == reference.

The parity checks have one body each. On CPU they run a torch transcription of the kernels'
algorithm (16-bit storage of h included), which checks the backward derivation the kernels
implement; on a GPU (marked `gpu`) the same bodies run the real CuPy kernels.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from dvsgkit.model import lif_cupy
from dvsgkit.model.lif import TAU, V_RESET, V_THRESHOLD, lif_multistep, surrogate_grad
from dvsgkit.model.lif_cupy import (
    CupyUnavailableError,
    kernel_source,
    lif_multistep_cupy,
    readable_kernel_error,
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
    monkeypatch.setattr(lif_cupy, "cp", None)
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


FUSED = [
    pytest.param(emulated, "cpu", id="emulated-cpu"),
    pytest.param(lif_multistep_cupy, "cuda", id="cupy-cuda", marks=pytest.mark.gpu),
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


@pytest.mark.parametrize(("fused", "device"), FUSED)
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


@pytest.mark.parametrize(("fused", "device"), FUSED)
def test_fused_lif_handles_strided_and_misaligned_inputs(fused, device: str) -> None:
    x, grad = lif_inputs((6, 4, 10), torch.float32, device)
    base = torch.zeros(x.numel() + 1, device=device)
    base[1:] = x.flatten()
    cases = {
        "transposed": x.transpose(1, 2).contiguous().transpose(1, 2),  # non-contiguous
        "offset": base[1:].view(x.shape),  # data pointer not 16-byte aligned
    }
    expected = lif_multistep(x)
    for name, xc in cases.items():
        assert torch.equal(fused(xc), expected), name


@pytest.mark.parametrize(("fused", "device"), FUSED)
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
