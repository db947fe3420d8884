"""The one kernel template (`dvsgkit.model.kernels`): the charge step without a division slow
path where tau allows it (and the same bits either way), 32- and 64-bit index variants, and a
fused backward that runs the neuron's backward once per window in train mode too.

The kernels run on the CPU through the g++ harness of tests/model/conftest.py."""

from __future__ import annotations

import copy
import functools
import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dvsgkit.model import kernels
from dvsgkit.model.fused_block import fused_bn_lif_pool
from dvsgkit.model.fused_cupy import kernel_source as fused_source
from dvsgkit.model.kernels.neuron import exact_inverse
from dvsgkit.model.lif import MultiStepLIF, lif_multistep, lif_step
from dvsgkit.model.lif_cupy import VEC, kernel_source
from dvsgkit.model.plif_cupy import kernel_source as plif_source

HERE = Path(__file__).parent


def _sibling(name: str):
    """A sibling test module (its harness launchers), loaded as tests/model/test_net.py does."""
    spec = importlib.util.spec_from_file_location(f"kernels_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lif_tests():
    return _sibling("test_lif_cupy")


@pytest.fixture(scope="module")
def fused_tests():
    return _sibling("test_fused_block")


def test_a_power_of_two_tau_multiplies_by_its_exact_inverse_and_others_divide() -> None:
    two = kernel_source("float32", tau=2.0)
    assert "#define INV_TAU 0.5f" in two and "__fdiv_rn" not in two
    three = kernel_source("float32", tau=3.0)
    assert "INV_TAU" not in three and "__fdiv_rn(__fsub_rn(x, __fsub_rn(v, V_RESET)), TAU)" in three
    assert "__fdiv_rn" not in plif_source("float32")  # the PLIF multiplies by its decay
    # x * 2^-k rounds as x / 2^k for every float32, subnormal results included
    bits = np.random.default_rng(0).integers(0, 2**32, 200_000, dtype=np.uint64)
    x = bits.astype(np.uint32).view(np.float32)
    x = x[np.isfinite(x)]
    for tau in (2.0, 4.0, 1024.0):
        inverse = np.float32(exact_inverse(tau))
        assert np.array_equal(x * inverse, x / np.float32(tau), equal_nan=True)
    assert exact_inverse(3.0) is None and exact_inverse(2.0**-130) is None


def _run_lif(harness, lif_tests, dtype: str, tau: float, kind: str, a, b, outs: int):
    """The unfused LIF source for `tau` through the harness, launched as lif_cupy._launch."""
    steps, m = a.shape[0], a.numel() // a.shape[0]
    w = VEC if m % VEC == 0 else 1
    files = [harness.file(f"tau_{n}") for n in ("a", "b", "o1", "o2")]
    harness.write(a, files[0])
    harness.write(b, files[1])
    exe = harness.build(f"lif_{dtype}_tau_{tau}", kernel_source(dtype, tau=tau), dtype,
                        lif_tests.CPP_MAIN)  # fmt: skip
    args = [str(exe), kind, str(steps), str(m), str(w), *map(str, files[: 2 + outs])]
    subprocess.run(args, check=True)
    return [harness.read(f, a) for f in files[2 : 2 + outs]]


@pytest.mark.parametrize("tau", [2.0, 3.0, 1.7, 4.0])
def test_the_lif_kernels_match_the_reference_bit_for_bit_for_any_tau(
    cpp_harness, lif_tests, tau: float
) -> None:
    # A power-of-two tau multiplies by 1 / tau, any other divides: the membrane, the spikes and
    # the input gradient equal the reference loop's (torch on the CPU) bit for bit.
    x, grad = lif_tests.lif_inputs((16, 3, 40), torch.float32, "cpu", seed=int(tau * 10))
    spikes, h = _run_lif(cpp_harness, lif_tests, "float32", tau, "f", x, x, outs=2)
    v, hs = torch.zeros_like(x[0]), []
    for step in x:  # the reference's own charge step, h kept
        hs.append(v + (step - (v - 0.0)) / tau)
        v = torch.where(hs[-1] >= 1.0, 0.0, hs[-1])
    assert torch.equal(h, torch.stack(hs))
    x_ref = x.clone().requires_grad_(True)
    ref = lif_multistep(x_ref, tau=tau)
    ref.backward(grad)
    assert torch.equal(spikes, ref) and ref.sum() > 0 and (ref == 0).any()
    (grad_x,) = _run_lif(cpp_harness, lif_tests, "float32", tau, "b", grad, h, outs=1)
    assert torch.equal(grad_x, x_ref.grad)
    assert torch.equal(lif_step(x[0], 0.0, tau=tau)[0], spikes[0])


@pytest.mark.parametrize("tau", [2.0, 3.0])
def test_the_fused_block_matches_the_chain_bit_for_bit_for_any_tau(
    cpp_harness, fused_tests, tau: float
) -> None:
    t, n, c = 4, 2, 3
    y = torch.randn(t * n, c, 6, 6, generator=torch.Generator().manual_seed(3)) * 2 + 1
    bn, _ = fused_tests.block_modules("lif", c, "cpu")
    bn.eval()
    cell = MultiStepLIF(tau=tau)
    with torch.no_grad():
        spikes = fused_bn_lif_pool(y, bn, cell, t, fused_tests.CppLaunch(cpp_harness))
        ref = fused_tests.torch_chain(y, bn, cell, t)
    assert ref.sum() > 0 and (ref == 0).any()
    assert torch.equal(spikes, ref)


class _Recorder:
    """A launcher that records each launch before running it on the harness."""

    def __init__(self, launch) -> None:
        self.launch, self.calls = launch, []

    def __call__(self, kind, spec, tensors, geo, tasks) -> None:
        self.calls.append((kind, [None if x is None else tuple(x.shape) for x in tensors]))
        self.launch(kind, spec, tensors, geo, tasks)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_the_fused_backward_runs_the_neuron_backward_once(
    cpp_harness, fused_tests, train: bool
) -> None:
    # One pass over T per window reads y and the pooled gradient; in train mode a finish then
    # adds the batch statistics' terms element by element to what the pass wrote (y-shaped),
    # instead of a second pass that recomputes the trajectory from the pooled gradient.
    t, n, c, h, w = 3, 2, 4, 6, 5
    y = torch.randn(t * n, c, h, w, generator=torch.Generator().manual_seed(1)) * 1.5
    bn, cell = fused_tests.block_modules("plif", c, "cpu")
    bn.train(train)
    bn_ref, cell_ref = copy.deepcopy(bn), copy.deepcopy(cell)
    recorder = _Recorder(fused_tests.CppLaunch(cpp_harness))
    y_fused = y.clone().requires_grad_(True)
    fused_bn_lif_pool(y_fused, bn, cell, t, recorder).sum().backward()
    backward = [shapes for kind, shapes in recorder.calls if kind == "backward"]
    pooled = (t * n, c, h // 2, w // 2)
    passes = [s for s in backward if s[3] is None]  # coef: only the finish has it
    assert len(passes) == 1 and passes[0][1] == pooled  # reads the pooled gradient
    finishes = [s for s in backward if s[3] is not None]
    assert len(finishes) == int(train)
    for shapes in finishes:
        assert shapes[1] == tuple(y.shape) and shapes[6] is None  # what the pass wrote
    y_ref = y.clone().requires_grad_(True)
    fused_tests.torch_chain(y_ref, bn_ref, cell_ref, t).sum().backward()
    torch.testing.assert_close(y_fused.grad, y_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cell.w.grad, cell_ref.w.grad, rtol=1e-5, atol=1e-6)


def test_indices_are_32_bit_where_every_index_fits() -> None:
    assert kernels.index_bits(16 * 16 * 128 * 128 * 128) == 32  # the recipe's largest layer
    assert kernels.index_bits(2**30) == 32 and kernels.index_bits(2**30 + 1) == 64
    assert "typedef int idx_t;" in kernel_source("float16")
    assert "typedef long long idx_t;" in kernel_source("float16", index_bits=64)
    with pytest.raises(ValueError, match="index_bits must be 32 or 64"):
        kernel_source("float16", index_bits=16)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_the_64_bit_fused_kernels_compute_what_the_32_bit_ones_do(
    cpp_harness, fused_tests, monkeypatch: pytest.MonkeyPatch, train: bool
) -> None:
    y = torch.randn(6, 3, 5, 4, generator=torch.Generator().manual_seed(2)) * 2
    y = y.to(torch.float16).to(memory_format=torch.channels_last)
    results = []
    for bits in (32, 64):
        with monkeypatch.context() as m:  # the harness builds the source of this index width
            m.setattr(
                fused_tests, "kernel_source", functools.partial(fused_source, index_bits=bits)
            )
            bn, cell = fused_tests.block_modules("lif", 3, "cpu")
            bn.train(train)
            y_fused = y.clone().requires_grad_(True)
            harness = type(cpp_harness)(cpp_harness.folder / f"index_{bits}")
            harness.folder.mkdir(exist_ok=True)
            out = fused_bn_lif_pool(y_fused, bn, cell, 3, fused_tests.CppLaunch(harness))
            out.float().sum().backward()
            results.append((out, y_fused.grad, bn.weight.grad))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("neuron", ["lif", "plif"])
def test_every_source_shares_the_template_and_differs_in_the_charge_step(neuron: str) -> None:
    sources = [kernel_source("float16") if neuron == "lif" else plif_source("float16"),
               fused_source("float16", 16, neuron)]  # fmt: skip
    code = kernels.neuron_code(neuron, {"tau": 2.0})
    for source in sources:
        assert code.charge in source and code.grad_x in source
        assert "__device__ __forceinline__ float surrogate(float over)" in source
    other = kernels.neuron_code("plif" if neuron == "lif" else "lif", {"tau": 2.0})
    assert all(other.charge not in source for source in sources)
