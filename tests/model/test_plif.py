"""The reference PLIF: hand-worked trajectory and gradients, and SpikingJelly's ParametricLIFNode
(a transcription always; the real package too when it is importable)."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from dvsgkit.model.lif import lif_multistep, surrogate_grad
from dvsgkit.model.plif import (
    MultiStepPLIF,
    PLIFCell,
    init_w,
    plif_multistep,
    tau_of,
)

# One neuron, k = 1/4 (tau 4, w = -log 3), v_threshold 1, worked by hand:
#   t  x    v_prev  h = v + (x - v) / 4    s  v = h (1 - s)
#   0  2.0  0       0.5                    0  0.5
#   1  3.0  0.5     1.125                  1  0
#   2  4.0  0       1.0  (threshold)       1  0
#   3  -2.0 0       -0.5                   0  -0.5
#   4  3.0  -0.5    0.375                  0  0.375
X = [2.0, 3.0, 4.0, -2.0, 3.0]
H = [0.5, 1.125, 1.0, -0.5, 0.375]
V_PREV = [0.0, 0.5, 0.0, 0.0, -0.5]
SPIKES = [0.0, 1.0, 1.0, 0.0, 0.0]
K = 0.25


def test_init_w_and_tau() -> None:
    assert init_w(2.0) == 0.0 and init_w(4.0) == pytest.approx(-math.log(3.0))
    assert float(tau_of(torch.tensor(init_w(4.0), dtype=torch.float64))) == pytest.approx(4.0)
    cell = PLIFCell(init_tau=3.0)
    assert cell.w.dtype == torch.float32 and cell.w.shape == ()
    assert float(cell.tau()) == pytest.approx(3.0)
    for bad in (1.0, 0.5, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="init_tau must be a finite number > 1"):
            init_w(bad)


def test_golden_trajectory_and_gradients() -> None:
    x = torch.tensor(X, dtype=torch.float64).view(5, 1).requires_grad_(True)
    w = torch.tensor(-math.log(3.0), dtype=torch.float64, requires_grad=True)
    spikes = plif_multistep(x, w.sigmoid())
    assert spikes.flatten().tolist() == SPIKES
    spikes.sum().backward()
    # dL/ds = 1. Backward: gh[t] = sg(h[t]) + (1 - s[t]) * gv[t], gv[t-1] = gh[t] * (1 - k),
    # dL/dx[t] = gh[t] * k, dL/dk = sum_t gh[t] * (x[t] - v[t-1]), dL/dw = dL/dk * k (1 - k).
    gh = [0.0] * 5
    gv = 0.0
    for t in reversed(range(5)):
        gh[t] = (
            float(surrogate_grad(torch.tensor(H[t] - 1.0, dtype=torch.float64)))
            + (1 - SPIKES[t]) * gv
        )
        gv = gh[t] * (1 - K)
    torch.testing.assert_close(x.grad.flatten().tolist(), [g * K for g in gh], rtol=1e-12, atol=0)
    dk = sum(g * (xt - vp) for g, xt, vp in zip(gh, X, V_PREV, strict=True))
    torch.testing.assert_close(float(w.grad), dk * K * (1 - K), rtol=1e-12, atol=0)


def test_init_tau_2_is_the_lif() -> None:
    x = (torch.rand(12, 3, 40, generator=torch.Generator().manual_seed(0)) * 3 - 0.5).double()
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    layer = MultiStepPLIF(init_tau=2.0).double()
    assert torch.equal(layer(x1), lif_multistep(x2))
    layer(x1).sum().backward()
    lif_multistep(x2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=1e-15)
    assert layer.w.grad is not None and layer.w.grad != 0


def test_step_view_and_multistep_agree() -> None:
    layer = MultiStepPLIF(init_tau=3.5)
    x = torch.rand(10, 2, 7, generator=torch.Generator().manual_seed(1)) * 2
    steps = []
    layer.reset()
    for xt in x.unbind(0):
        steps.append(layer.step(xt))
    assert torch.equal(torch.stack(steps), layer(x))
    assert isinstance(layer.v, torch.Tensor)
    layer.reset()
    assert layer.v == 0.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="backend must be 'torch' or 'cupy'"):
        MultiStepPLIF(backend="triton")
    with pytest.raises(ValueError, match="time-major"):
        plif_multistep(torch.zeros(3), torch.tensor(0.5))
    with pytest.raises(ValueError, match="one value per layer"):
        plif_multistep(torch.zeros(3, 2), torch.tensor([0.5, 0.5]))


class SJParametricLIF(torch.nn.Module):
    """SpikingJelly 0.0.0.0.14 `ParametricLIFNode(init_tau, decay_input=True, v_threshold=1,
    v_reset=0, surrogate_function=ATan(alpha=2), detach_reset=True)` in multi-step mode with the
    torch backend, transcribed from its source (`activation_based/neuron.py`, `BaseNode` and
    `surrogate.ATan`): per step it charges with `self.w.sigmoid()`, fires through the ATan
    surrogate and resets with `(1 - s) * v + s * v_reset` on a detached spike."""

    class _ATan(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
            ctx.save_for_backward(x)
            ctx.alpha = alpha
            return (x >= 0).to(x)

        @staticmethod
        def backward(ctx, grad_output: torch.Tensor):
            (x,) = ctx.saved_tensors
            alpha = ctx.alpha
            return alpha / 2 / (1 + (math.pi / 2 * alpha * x).pow_(2)) * grad_output, None

    def __init__(self, init_tau: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.as_tensor(-math.log(init_tau - 1.0)))

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        v = torch.full_like(x_seq[0].data, 0.0)
        out = []
        for t in range(x_seq.shape[0]):
            v = v + (x_seq[t] - v) * self.w.sigmoid()
            spike = self._ATan.apply(v - 1.0, 2.0)
            s = spike.detach()
            v = (1.0 - s) * v + s * 0.0
            out.append(spike)
        return torch.stack(out)


def real_spikingjelly_plif(init_tau: float) -> torch.nn.Module:
    from spikingjelly.activation_based import neuron, surrogate

    return neuron.ParametricLIFNode(
        init_tau=init_tau, surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="m"
    )


def real_spikingjelly_clock_driven_plif(init_tau: float) -> torch.nn.Module:
    from spikingjelly.clock_driven import neuron, surrogate

    return neuron.MultiStepParametricLIFNode(
        init_tau=init_tau, surrogate_function=surrogate.ATan(), detach_reset=True
    )


HAS_SJ = importlib.util.find_spec("spikingjelly") is not None
needs_sj = pytest.mark.skipif(not HAS_SJ, reason="spikingjelly is not installed")
REFERENCES = [
    pytest.param(SJParametricLIF, id="transcription"),
    pytest.param(real_spikingjelly_plif, id="spikingjelly-activation_based", marks=needs_sj),
    pytest.param(
        real_spikingjelly_clock_driven_plif, id="spikingjelly-clock_driven", marks=needs_sj
    ),
]


@pytest.mark.parametrize("make_reference", REFERENCES)
@pytest.mark.parametrize("init_tau", [2.0, 1.4, 3.7])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_spikingjelly_parametric_lif(make_reference, init_tau: float, dtype) -> None:
    g = torch.Generator().manual_seed(int(init_tau * 10))
    x = (torch.rand(64, 3, 50, generator=g) * 3 - 0.8).to(dtype)  # [T, N, F], many steps
    grad = torch.randn(x.shape, generator=g).to(dtype)
    reference = make_reference(init_tau).to(dtype)
    ours = MultiStepPLIF(init_tau=init_tau).to(dtype)
    with torch.no_grad():  # a trained-looking w, not the initial one
        reference.w.add_(0.3)
        ours.w.add_(0.3)
    outs = []
    for layer in (reference, ours):
        xi = x.clone().requires_grad_(True)
        spikes = layer(xi)
        spikes.backward(grad)
        outs.append((spikes.detach(), xi.grad, layer.w.grad))
    (s_ref, gx_ref, gw_ref), (s, gx, gw) = outs
    assert 0.05 < s_ref.mean() < 0.95, "the test needs a neuron that fires and stays silent"
    assert torch.equal(s, s_ref), "spikes differ"
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(gx, gx_ref, **tol)
    torch.testing.assert_close(gw, gw_ref, **tol)
    assert gw_ref.abs() > 0
