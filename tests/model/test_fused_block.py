"""The fused BatchNorm + LIF/PLIF + max-pool block against the torch module chain
`max_pool2d(neuron(bn(y)))`: spikes, gradients of y, bn.weight, bn.bias and the PLIF's w, and
BatchNorm's running statistics, in train and eval mode, on odd and even shapes.

One parity body runs on two back ends: the generated CUDA source compiled by g++ and run on the
CPU (tests/model/conftest.py), and the real CuPy kernels on a GPU (marked `gpu`).
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dvsgkit.model import cupy_runtime
from dvsgkit.model.fused_block import (
    bn_lif_pool,
    bn_statistics,
    channel_sums,
    fused_bn_lif_pool,
    geometry,
)
from dvsgkit.model.fused_cupy import kernel_source
from dvsgkit.model.lif import MultiStepLIF
from dvsgkit.model.lif_cupy import THREADS, CupyUnavailableError
from dvsgkit.model.plif import MultiStepPLIF

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
@pytest.mark.parametrize("neuron", ["lif", "plif"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_kernel_source_compiles_with_nvcc(dtype: str, neuron: str, tmp_path: Path) -> None:
    src = tmp_path / f"fused_{neuron}_{dtype}.cu"
    src.write_text(kernel_source(dtype, 16, neuron))
    out = tmp_path / f"fused_{neuron}_{dtype}.cubin"
    cmd = ["nvcc", "-cubin", "-arch=sm_80", "-Werror", "all-warnings", "-o", str(out), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    binary = out.read_bytes()
    assert b"fused_forward" in binary and b"fused_backward" in binary


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
@pytest.mark.parametrize("neuron", ["lif", "plif"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_backward_keeps_the_recipe_trajectory_in_registers(
    dtype: str, neuron: str, tmp_path: Path
) -> None:
    # Backward holds T = 16 steps x 4 elements of y and of the membrane per thread; ptxas must
    # fit them in registers on an H100/H200 (sm_90): a spill would send them through local memory.
    src = tmp_path / f"fused_{neuron}_{dtype}.cu"
    src.write_text(kernel_source(dtype, 16, neuron))
    cmd = ["nvcc", "-cubin", "-arch=sm_90", "-Xptxas", "-v", "-o", str(tmp_path / "k"), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", result.stderr)
    registers = [int(r) for r in re.findall(r"Used (\d+) registers", result.stderr)]
    assert len(spills) == 2 and len(registers) == 2, result.stderr  # forward and backward
    assert all(stores == loads == "0" for stores, loads in spills), result.stderr
    # a launch's block of THREADS threads must fit the SM's 64K registers (allocated per thread
    # in steps of 8), or it fails with "too many resources requested for launch"
    assert -(-max(registers) // 8) * 8 * THREADS <= 65536, (registers, THREADS)


def test_kernel_source_bakes_steps_and_parameters_and_rejects_bad_input() -> None:
    src = kernel_source("float32", 7, "lif", tau=3.0, v_threshold=0.5, v_reset=-0.25)
    for line in ("STEPS 7", "TAU 3.0f", "V_TH 0.5f", "V_RESET -0.25f"):
        assert f"#define {line}" in src
    assert "*decay" in kernel_source("float32", 2, "plif") and "*decay" not in src
    with pytest.raises(ValueError, match="no fused kernel for dtype float64"):
        kernel_source("float64", 4)
    with pytest.raises(ValueError, match="neuron must be one of"):
        kernel_source("float32", 4, "izhikevich")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        kernel_source("float32", 0)


# --- BatchNorm statistics: plain torch, checked on the CPU against nn.BatchNorm2d itself ---


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_bn_statistics_match_batchnorm2d_bit_for_bit(momentum, layout) -> None:
    g = torch.Generator().manual_seed(0)
    bn = nn.BatchNorm2d(5, momentum=momentum)
    bn.running_mean.uniform_(-1, 1, generator=g)
    bn.running_var.uniform_(0.5, 2, generator=g)
    ours = copy.deepcopy(bn)
    for step in range(3):  # momentum None: the factor is 1 / num_batches_tracked
        y = (torch.randn(12, 5, 7, 9, generator=g) * 2 + step).to(memory_format=layout)
        bn.train(), ours.train()
        bn(y)
        stats, batch = bn_statistics(y, ours)
        assert batch
        assert torch.equal(ours.running_mean, bn.running_mean)
        assert torch.equal(ours.running_var, bn.running_var)  # unbiased, as torch keeps it
        assert torch.equal(ours.num_batches_tracked, bn.num_batches_tracked)
        var = y.var((0, 2, 3), unbiased=False).double()
        torch.testing.assert_close(stats[0], y.mean((0, 2, 3)), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(stats[1].double(), (var + bn.eps).rsqrt(), rtol=1e-6, atol=0)
    bn.eval(), ours.eval()
    stats, batch = bn_statistics(y, ours)
    assert not batch and torch.equal(stats[0], bn.running_mean)
    assert torch.equal(ours.num_batches_tracked, bn.num_batches_tracked)  # eval counts nothing


def test_bn_statistics_without_running_stats_use_the_batch_in_eval_too() -> None:
    bn = nn.BatchNorm2d(3, track_running_stats=False).eval()
    y = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    stats, batch = bn_statistics(y, bn)
    assert batch and bn.running_mean is None
    torch.testing.assert_close(stats[0], y.mean((0, 2, 3)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn_statistics(torch.ones(1, 3, 1, 1), bn.train())


def test_channel_sums_follow_the_window_order_of_either_layout() -> None:
    y = torch.zeros(6, 3, 5, 4)  # T*N = 6 (N = 2), windows 3 x 2
    for layout in (torch.contiguous_format, torch.channels_last):
        yl = y.to(memory_format=layout)
        geo, tasks = geometry(yl, torch.zeros(6, 3, 2, 2).to(memory_format=layout), 2)
        assert tasks == 2 * 3 * 3 * 2 and geo[4] == int(layout == torch.channels_last)
        channel = torch.arange(3.0).view(1, 3, 1, 1).expand(2, 3, 3, 2)  # [n, c, row, col]
        order = (0, 2, 3, 1) if geo[4] else (0, 1, 2, 3)
        partial = channel.permute(order).reshape(1, -1)  # each window holds its channel number
        assert channel_sums(partial, geo).tolist() == [[0.0, 12.0, 24.0]]


# --- parity with the torch chain, on the g++ harness and (gpu) on CuPy ---

CPP_FMA = """#include <cmath>
static inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
"""
CPP_MAIN = r"""
int main(int argc, char** argv) {  // kind, 3 words per buffer (i|o|- path bytes), 13 integers
  const char kind = argv[1][0];
  const int buffers = kind == 'f' ? 4 : 7;
  void* buf[7];
  for (int b = 0; b < buffers; ++b) {
    const char mode = argv[2 + 3 * b][0]; const size_t bytes = atoll(argv[4 + 3 * b]);
    buf[b] = mode == 'i'   ? load(argv[3 + 3 * b], bytes)
             : mode == 'o' ? aligned_alloc(64, bytes + 64)
                           : nullptr;
    if (mode == 'o') memset(buf[b], 0xff, bytes);  // NaN/garbage where a kernel writes nothing
  }
  long long g[13];
  for (int i = 0; i < 13; ++i) g[i] = atoll(argv[2 + 3 * buffers + i]);
  blockDim.x = 3; gridDim.x = 2;  // a small grid, so the grid-stride loop runs too
  for (blockIdx.x = 0; blockIdx.x < gridDim.x; ++blockIdx.x)
    for (threadIdx.x = 0; threadIdx.x < blockDim.x; ++threadIdx.x) {
      if (kind == 'f')
        fused_forward((const elem_t*)buf[0], (const float*)buf[1], (const float*)buf[2],
                      (elem_t*)buf[3], g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8],
                      g[9], g[10], g[11], g[12]);
      else
        fused_backward((const elem_t*)buf[0], (const elem_t*)buf[1], (const float*)buf[2],
                       (const float*)buf[3], (const float*)buf[4], (elem_t*)buf[5],
                       (float*)buf[6], g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8],
                       g[9], g[10], g[11], g[12]);
    }
  for (int b = 0; b < buffers; ++b)
    if (argv[2 + 3 * b][0] == 'o') save(argv[3 + 3 * b], buf[b], atoll(argv[4 + 3 * b]));
  return 0; }
"""
OUTPUTS = {"forward": {3}, "backward": {5, 6}}


class CppLaunch:
    """The fused kernels' source per (dtype, T, neuron, parameters), built by the g++ harness
    and launched like `fused_cupy.cupy_launch`: same pointers, same 13 integers."""

    def __init__(self, harness) -> None:
        self.harness = harness

    def __call__(self, kind: str, spec: tuple, tensors: list, geo: tuple, tasks: int) -> None:
        dtype_name, steps, neuron, params = spec
        h = self.harness
        source = CPP_FMA + kernel_source(dtype_name, steps, neuron, **dict(params))
        name = f"fused_{neuron}_{dtype_name}_{steps}_{abs(hash(params))}"
        exe = h.build(name, source, dtype_name, CPP_MAIN)
        args = [str(exe), kind[0]]
        for i, t in enumerate(tensors):
            if t is None:
                args += ["-", "-", "0"]
                continue
            path = h.file(f"fused_{i}")
            if i not in OUTPUTS[kind]:
                h.write(t, path)
            mode = "o" if i in OUTPUTS[kind] else "i"
            args += [mode, str(path), str(t.numel() * t.element_size())]
        subprocess.run([*args, *map(str, geo)], check=True)
        for i in OUTPUTS[kind]:
            if tensors[i] is not None:
                tensors[i].copy_(h.read(h.file(f"fused_{i}"), tensors[i]))


@pytest.fixture
def fused(request: pytest.FixtureRequest):
    """The fused block under test: "cpp" (the kernel source on the CPU) or "cupy" (GPU)."""
    if request.param == "cupy":
        return bn_lif_pool
    launch = CppLaunch(request.getfixturevalue("cpp_harness"))
    return lambda y, bn, neuron, t: fused_bn_lif_pool(y, bn, neuron, t, launch)


FUSED = [
    pytest.param("cpp", "cpu", id="kernel-source-cpu"),
    pytest.param("cupy", "cuda", id="cupy-cuda", marks=pytest.mark.gpu),
]
SHAPES = [(3, 2, 3, 5, 5), (4, 2, 8, 8, 6), (2, 1, 1, 3, 2)]  # T, N, C, H, W: odd, even, tiny
# dL/dy: float32 differs from autograd only in summation order; 16-bit stores dL/dy rounded
TOL_Y = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.float16: {"rtol": 1e-3, "atol": 1e-4},
    torch.bfloat16: {"rtol": 8e-3, "atol": 1e-3},
}
TOL_PARAM = {"rtol": 1e-5, "atol": 1e-5}  # bn.weight, bn.bias, w: fp32 sums in every dtype


def block_modules(neuron: str, channels: int, device: str, seed: int = 0):
    """A BatchNorm2d with spread-out weight, bias and running statistics, and a neuron."""
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=g) * 1.5 + 0.5)
        bn.bias.copy_(torch.rand(channels, generator=g) + 0.5)
        bn.running_mean.copy_(torch.rand(channels, generator=g) - 0.5)
        bn.running_var.copy_(torch.rand(channels, generator=g) + 0.5)
    cell = MultiStepLIF() if neuron == "lif" else MultiStepPLIF(init_tau=1.6)
    return bn.to(device), cell.to(device)


def torch_chain(y: torch.Tensor, bn: nn.Module, neuron: nn.Module, t: int) -> torch.Tensor:
    """The unfused block, as GestureNet's layer-by-layer forward runs it."""
    n = y.shape[0] // t
    return F.max_pool2d(neuron(bn(y).unflatten(0, (t, n))).flatten(0, 1), 2, 2)


NEAR = 1e-4  # a membrane this close to the threshold may fire the other way on a GPU


def settled_windows(y: torch.Tensor, bn: nn.Module, cell: nn.Module, t: int) -> torch.Tensor:
    """1.0 for each pooled output `[T*N, C, H//2, W//2]` whose window holds no membrane within
    NEAR of the threshold at any step of the reference chain (float32, on the CPU), else 0.0.
    On a GPU the batch statistics are summed in another order than on the CPU, so such a window
    may spike differently there and route its gradient elsewhere: the GPU parity tests give it
    no upstream gradient in either run, count its flips, and compare everything else."""
    with torch.no_grad():
        y = y.detach().float().cpu()
        batch = bn.training or bn.running_mean is None
        mean, var = (None, None) if batch else (bn.running_mean.cpu(), bn.running_var.cpu())
        weight, bias = (None if p is None else p.detach().cpu() for p in (bn.weight, bn.bias))
        x = F.batch_norm(y, mean, var, weight, bias, batch, 0.0, bn.eps)
        x = x.unflatten(0, (t, y.shape[0] // t))
        plif = isinstance(cell, MultiStepPLIF)
        reset = 0.0 if plif else cell.v_reset
        v = torch.full_like(x[0], reset)
        near = torch.zeros_like(x[0], dtype=torch.bool)
        for step in x:
            if plif:
                h = v + (step - v) * cell.w.detach().cpu().sigmoid()
            else:
                h = v + (step - (v - cell.v_reset)) / cell.tau
            near |= (h - cell.v_threshold).abs() < NEAR
            v = torch.where(h >= cell.v_threshold, reset, h)
        _, _, height, width = y.shape
        windows = F.max_pool2d(near.float(), 2, 2, ceil_mode=True)[..., : height // 2, : width // 2]
        return (1.0 - windows).expand(t, *windows.shape).flatten(0, 1)


@pytest.mark.parametrize(("fused", "device"), FUSED, indirect=["fused"])
@pytest.mark.parametrize("neuron", ["lif", "plif"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fused_block_matches_torch_chain(fused, device, neuron, train, layout, dtype, shape):
    t, n, c, h, w = shape
    g = torch.Generator().manual_seed(sum(shape))
    y = (torch.randn(t * n, c, h, w, generator=g) * 1.5).to(dtype)  # the stored values
    grad = (torch.randint(-8, 9, (t * n, c, h // 2, w // 2), generator=g) / 8).to(dtype)
    bn, cell = block_modules(neuron, c, device)
    bn_ref, cell_ref = copy.deepcopy(bn), copy.deepcopy(cell)
    bn.train(train), bn_ref.train(train)

    y_fused = y.to(device, memory_format=layout).clone().requires_grad_(True)
    spikes = fused(y_fused, bn, cell, t)
    # the reference: the float32 module chain on the stored values, on the CPU, same layout
    y_ref = y.float().to(memory_format=layout).clone().requires_grad_(True)
    ref = torch_chain(y_ref, bn_ref.cpu(), cell_ref.cpu(), t)
    # on a GPU, windows near the threshold get no upstream gradient (settled_windows)
    keep = torch.ones(ref.shape) if device == "cpu" else settled_windows(y_ref, bn_ref, cell_ref, t)
    spikes.backward((grad.float() * keep).to(device, dtype))
    ref.backward(grad.float() * keep)

    assert spikes.dtype == dtype and spikes.shape == ref.shape
    assert spikes.is_contiguous(memory_format=layout)
    assert ref.numel() < 8 or (ref.sum() > 0 and (ref == 0).any()), "some fire, some not"
    for ours, theirs in [
        (bn.running_mean, bn_ref.running_mean),
        (bn.running_var, bn_ref.running_var),
        (bn.num_batches_tracked, bn_ref.num_batches_tracked),
    ]:
        if device == "cpu":
            assert torch.equal(ours, theirs)
        else:  # CUDA sums in another order than the CPU
            torch.testing.assert_close(ours.cpu(), theirs, rtol=1e-5, atol=1e-6)
    spikes = spikes.float().cpu()
    flips = spikes != ref
    if device == "cpu":
        assert torch.equal(spikes, ref), "spikes differ"
    # a GPU may flip a spike only in a window near the threshold, and rarely
    assert not (flips & (keep > 0)).any(), "a spike flipped away from the threshold"
    assert flips.sum() <= max(1, ref.numel() // 1000), f"{int(flips.sum())} spikes flipped"
    assert y_fused.grad.dtype == dtype and y_fused.grad.stride() == y_fused.stride()
    scale = float(y_ref.grad.abs().max())
    tol = TOL_Y[dtype]
    torch.testing.assert_close(
        y_fused.grad.float().cpu(), y_ref.grad, rtol=tol["rtol"], atol=tol["atol"] * scale
    )
    params = [(bn.weight, bn_ref.weight), (bn.bias, bn_ref.bias)]
    if neuron == "plif":
        params.append((cell.w, cell_ref.w))
    for ours, theirs in params:
        torch.testing.assert_close(ours.grad.cpu(), theirs.grad, **TOL_PARAM)


@pytest.mark.parametrize(("fused", "device"), FUSED, indirect=["fused"])
def test_fused_block_routes_ties_to_the_first_spike_in_scan_order(fused, device) -> None:
    # Eval BatchNorm with weight 1, bias 0, mean 0, var 1, eps 0: x = y. Every window gets two
    # spiking elements (1 and 3, or 2 and 3) or none; the gradient must reach the first one only.
    bn = nn.BatchNorm2d(1, eps=0.0).eval()
    y = torch.zeros(1, 1, 4, 4)
    y[0, 0, 0, 1] = y[0, 0, 1, 1] = 4.0  # window (0, 0): elements 1 and 3 fire
    y[0, 0, 3, 2] = y[0, 0, 3, 3] = 4.0  # window (1, 1): elements 2 and 3 fire
    y = y.to(device).requires_grad_(True)
    spikes = fused(y, bn.to(device), MultiStepLIF().to(device), 1)
    spikes.backward(torch.ones(1, 1, 2, 2, device=device))
    grad = y.grad.cpu()[0, 0]
    # ATan at h = 2 (fired) and at h = 0 (element 0 of a silent window): (alpha/2) / (1 + pi^2);
    # times dh/dx = 1 / tau
    expected = torch.zeros(4, 4)
    expected[0, 1] = expected[3, 2] = expected[0, 2] = expected[2, 0] = 1 / (1 + torch.pi**2) / 2
    torch.testing.assert_close(grad, expected)


def test_fused_block_rejects_bad_input_with_the_fix() -> None:
    bn, cell = block_modules("lif", 3, "cpu")
    run = lambda y, t: fused_bn_lif_pool(y, bn, cell, t, launch=None)  # noqa: E731
    with pytest.raises(ValueError, match="first dim 6 is not T\\*N for T=4"):
        run(torch.zeros(6, 3, 4, 4), 4)
    with pytest.raises(ValueError, match=r"y must be \[T\*N, 3, H, W\]"):
        run(torch.zeros(6, 2, 4, 4), 3)
    with pytest.raises(ValueError, match="supports .*float64"):
        run(torch.zeros(6, 3, 4, 4, dtype=torch.float64), 3)
    with pytest.raises(TypeError, match="MultiStepLIF or MultiStepPLIF"):
        fused_bn_lif_pool(torch.zeros(6, 3, 4, 4), bn, nn.ReLU(), 3, launch=None)


def test_bn_lif_pool_without_cupy_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cupy_runtime, "cp", None)
    bn, cell = block_modules("lif", 3, "cpu")
    with pytest.raises(CupyUnavailableError, match="pip install cupy-cuda12x"):
        bn_lif_pool(torch.zeros(6, 3, 4, 4), bn, cell, 3)


def test_batchnorm_apply_rounds_as_torch_near_the_threshold(cpp_harness) -> None:
    # Eval BatchNorm, T = 1: the LIF fires iff x = bn(y) >= 2 (h = x / tau). Each y is picked so
    # that x lands within a few ulps of 2, where one fused multiply-add and a multiply then an add
    # round to different sides; the spikes must still equal torch's, bit for bit.
    g = torch.Generator().manual_seed(5)
    channels, side = 64, 8
    bn, cell = block_modules("lif", channels, "cpu", seed=5)
    bn.eval()
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps) * bn.weight
        # one rounding (as a fused multiply-add); two roundings must differ in some channel
        shift = (bn.bias.double() - bn.running_mean.double() * scale.double()).float()
        assert (shift != bn.bias - bn.running_mean * scale).any()
    target = ((2.0 - shift.double()) / scale.double()).float().view(1, -1, 1, 1)
    steps = torch.randint(-3, 4, (2, channels, side, side), generator=g, dtype=torch.int32)
    y = (target.view(torch.int32) + steps).view(torch.float32)  # target +- 3 ulps
    x = bn(y)
    assert (x == 2.0).any() and (x < 2.0).any() and (x > 2.0).any()
    launch = CppLaunch(cpp_harness)
    with torch.no_grad():
        spikes = fused_bn_lif_pool(y, bn, cell, 1, launch)
        assert torch.equal(spikes, torch_chain(y, bn, cell, 1))


@pytest.mark.parametrize(("fused", "device"), FUSED, indirect=["fused"])
def test_fused_block_without_affine_and_with_an_expanded_gradient(fused, device) -> None:
    # affine=False BatchNorm (no weight, no bias) and momentum=None; spikes.sum() hands backward
    # a stride-0 gradient, which the kernels read through a dense copy
    t, n, c = 2, 3, 4
    y = torch.randn(t * n, c, 6, 7, generator=torch.Generator().manual_seed(7)) * 2 + 1.5
    bn = nn.BatchNorm2d(c, affine=False, momentum=None)
    bn_ref, cell = copy.deepcopy(bn), MultiStepPLIF(init_tau=3.0)
    cell_ref = copy.deepcopy(cell)
    y_fused = y.to(device).clone().requires_grad_(True)
    spikes = fused(y_fused, bn.to(device), cell.to(device), t)
    y_ref = y.clone().requires_grad_(True)
    ref = torch_chain(y_ref, bn_ref, cell_ref, t)
    keep = torch.ones(ref.shape) if device == "cpu" else settled_windows(y_ref, bn_ref, cell_ref, t)
    if keep.all():  # sum(): backward gets a stride-0 gradient
        spikes.sum().backward()
        ref.sum().backward()
    else:  # on a GPU, windows near the threshold get no upstream gradient (settled_windows)
        (spikes * keep.to(device)).sum().backward()
        (ref * keep).sum().backward()
    assert ref.sum() > 0 and (ref == 0).any()
    flips = spikes.cpu() != ref
    if device == "cpu":
        assert torch.equal(spikes, ref) and torch.equal(bn.running_var, bn_ref.running_var)
    assert not (flips & (keep > 0)).any() and flips.sum() <= 1, int(flips.sum())
    torch.testing.assert_close(y_fused.grad.cpu(), y_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cell.w.grad.cpu(), cell_ref.w.grad, **TOL_PARAM)


@pytest.mark.parametrize("neuron", ["lif", "plif"])
def test_settled_windows_leave_out_the_windows_near_the_threshold(neuron: str) -> None:
    # the GPU parity tests' mask, checked here: eval BatchNorm with x = y, T = 2, N = 1
    bn = nn.BatchNorm2d(1, eps=0.0).eval()
    cell = MultiStepLIF() if neuron == "lif" else MultiStepPLIF()  # decay 1/2 either way
    y = torch.zeros(2, 1, 5, 4)
    y[0, 0, 1, 1] = 2.0 + 4e-5  # h = 1 + 2e-5 at step 0: window (0, 0)
    y[1, 0, 2, 3] = 2.0 + 4e-3  # h = 1.002 at step 1: far enough, window (1, 1)
    y[1, 0, 4, 0] = 2.0  # h = 1.0 in the cut last row: pools nothing
    keep = settled_windows(y, bn, cell, 2)
    assert keep.shape == (2, 1, 2, 2)
    assert keep[:, 0].tolist() == [[[0.0, 1.0], [1.0, 1.0]]] * 2
    chain = torch_chain(y, bn, cell, 2)
    assert chain.shape == keep.shape and chain[0, 0, 0, 0] == 1 and chain[1, 0, 1, 1] == 1


@pytest.mark.gpu
@pytest.mark.parametrize("neuron", ["lif", "plif"])
def test_fused_block_at_the_recipe_size_under_amp_matches_the_torch_chain(neuron: str) -> None:
    # conv1's output at T = 16, B = 2, C = 128, 128 x 128 as autocast hands it to the block
    # (float16, channels_last), train mode, against the float32 module chain on the GPU
    t, n, c, side = 16, 2, 128, 128
    g = torch.Generator().manual_seed(11)
    y = (torch.randn(t * n, c, side, side, generator=g) * 1.5).to(torch.float16)
    grad = torch.randint(-8, 9, (t * n, c, side // 2, side // 2), generator=g) / 8
    bn, cell = block_modules(neuron, c, "cuda")
    bn_ref, cell_ref = copy.deepcopy(bn), copy.deepcopy(cell)
    y_fused = y.cuda().to(memory_format=torch.channels_last).requires_grad_(True)
    spikes = bn_lif_pool(y_fused, bn, cell, t)
    y_ref = y.float().cuda().to(memory_format=torch.channels_last).requires_grad_(True)
    ref = torch_chain(y_ref, bn_ref, cell_ref, t)
    keep = settled_windows(y_ref, bn_ref, cell_ref, t).cuda()
    spikes.backward((grad.cuda() * keep).half())
    ref.backward(grad.cuda() * keep)
    flips = spikes.float() != ref
    assert 0 < ref.mean() < 0.9, "some windows fire, some not"
    assert not (flips & (keep > 0)).any(), "a spike flipped away from the threshold"
    assert flips.sum() <= ref.numel() // 1000, f"{int(flips.sum())} spikes flipped"
    assert y_fused.grad.stride() == y_fused.stride()
    scale = float(y_ref.grad.abs().max())
    tol = TOL_Y[torch.float16]
    torch.testing.assert_close(
        y_fused.grad.float(), y_ref.grad, rtol=tol["rtol"], atol=tol["atol"] * scale
    )
    params = [(bn.weight, bn_ref.weight), (bn.bias, bn_ref.bias)]
    if neuron == "plif":
        params.append((cell.w, cell_ref.w))
    for ours, theirs in params:  # sums of 2^19 terms per channel, in another order
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(bn.running_var, bn_ref.running_var, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_the_kernels_run_on_the_current_torch_stream() -> None:
    # A side stream first sleeps, then writes y: kernels launched on any other stream would
    # read y before it is written
    from dvsgkit.model.lif_cupy import lif_multistep_cupy

    t, n, c = 4, 2, 16
    g = torch.Generator().manual_seed(4)
    base = (torch.randn(t * n, c, 32, 32, generator=g) * 1.5).cuda()
    base = base.to(memory_format=torch.channels_last)
    grad = (torch.randint(-8, 9, (t * n, c, 16, 16), generator=g) / 8).cuda()
    modules = block_modules("plif", c, "cuda")

    def run() -> list[torch.Tensor]:
        bn, cell = copy.deepcopy(modules)
        y = base.clone().requires_grad_(True)
        out = bn_lif_pool(y, bn, cell, t)
        out.backward(grad)
        x = base.clone().unflatten(0, (t, n)).requires_grad_(True)
        spikes = lif_multistep_cupy(x)
        spikes.backward(torch.ones_like(spikes))
        return [out, y.grad, bn.weight.grad, cell.w.grad, spikes, x.grad]

    expected = run()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # about 0.1 s of GPU time before y exists
        got = run()
    torch.cuda.current_stream().wait_stream(side)
    assert expected[0].sum() > 0 and expected[4].sum() > 0
    for ours, theirs in zip(got, expected, strict=True):
        assert torch.equal(ours, theirs)
