"""The reference LIF: a hand-computed trajectory and gradient, the surrogate, dropout, voting."""

from __future__ import annotations

import math

import pytest
import torch

from dvsgkit.model.lif import (
    ATanSpike,
    LIFCell,
    MultiStepLIF,
    SampleDropout,
    lif_multistep,
    surrogate_grad,
    vote,
)

# One neuron, tau 2, v_threshold 1, v_reset 0, worked by hand:
#   t  x    v_prev  h = v + (x - v) / 2      s  v = h (1 - s)
#   0  0.8  0       0.4                      0  0.4
#   1  0.8  0.4     0.6                      0  0.6
#   2  1.6  0.6     1.1                      1  0
#   3  0.2  0       0.1                      0  0.1
#   4  3.0  0.1     1.55                     1  0
#   5  2.0  0       1.0  (exactly threshold) 1  0
X = [0.8, 0.8, 1.6, 0.2, 3.0, 2.0]
H = [0.4, 0.6, 1.1, 0.1, 1.55, 1.0]
SPIKES = [0.0, 0.0, 1.0, 0.0, 1.0, 1.0]


def sg(h: float) -> float:
    """ATan surrogate, alpha 2: 1 / (1 + (pi (h - 1))^2)."""
    return 1.0 / (1.0 + (math.pi * (h - 1.0)) ** 2)


def test_golden_trajectory() -> None:
    x = torch.tensor(X, dtype=torch.float64).view(6, 1)  # [T, N]
    spikes = lif_multistep(x)
    assert spikes.dtype == torch.float64
    assert spikes.flatten().tolist() == SPIKES


def test_golden_gradient() -> None:
    # L = sum_t s[t]: dL/ds = 1 everywhere. Backward by hand, dL/dh[t] = sg(h[t]) + (1 - s[t])
    # * dL/dv[t], dL/dv[t-1] = dL/dh[t] * (1 - 1/tau), dL/dx[t] = dL/dh[t] / tau; a spike at t
    # (detached reset) blocks the membrane path into h[t].
    gh5 = sg(H[5])  # s = 1
    gh4 = sg(H[4])  # s = 1: the gradient from t = 5 stops at the reset
    gh3 = sg(H[3]) + gh4 / 2
    gh2 = sg(H[2])  # s = 1
    gh1 = sg(H[1]) + gh2 / 2
    gh0 = sg(H[0]) + gh1 / 2
    expected = [g / 2 for g in (gh0, gh1, gh2, gh3, gh4, gh5)]
    x = torch.tensor(X, dtype=torch.float64).view(6, 1).requires_grad_(True)
    lif_multistep(x).sum().backward()
    torch.testing.assert_close(x.grad.flatten().tolist(), expected, rtol=1e-12, atol=0)


def test_atan_backward_is_the_derivative_of_its_smooth_primitive() -> None:
    # (1/pi) atan(pi/2 alpha x) + 1/2 has exactly the ATan surrogate as derivative.
    over = torch.linspace(-3, 3, 101, dtype=torch.float64, requires_grad=True)
    g = torch.rand(101, dtype=torch.float64)
    (grad_surrogate,) = torch.autograd.grad(ATanSpike.apply(over, 2.0), over, g)
    primitive = torch.atan(math.pi / 2 * 2.0 * over) / math.pi + 0.5
    (grad_primitive,) = torch.autograd.grad(primitive, over, g)
    torch.testing.assert_close(grad_surrogate, grad_primitive, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(surrogate_grad(over.detach()), grad_primitive / g)
    assert ATanSpike.apply(over, 2.0).tolist() == (over >= 0).double().tolist()


def test_cell_steps_match_the_layer_and_reset_restarts() -> None:
    torch.manual_seed(0)
    x = torch.rand(7, 3, 5) * 2  # [T, N, F]
    cell = LIFCell()
    steps = torch.stack([cell(x[t]) for t in range(7)])
    torch.testing.assert_close(steps, lif_multistep(x), rtol=0, atol=0)
    assert steps.sum() > 0
    cell.reset()
    assert torch.equal(cell(x[0]), lif_multistep(x[:1])[0])
    layer = MultiStepLIF()
    assert torch.equal(layer(x), layer(x)), "the layer keeps no state between calls"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"time-major \[T, N, ...\], got shape \(5,\)"):
        lif_multistep(torch.zeros(5))
    with pytest.raises(ValueError, match="tau must be > 1"):
        LIFCell(tau=1.0)
    with pytest.raises(ValueError, match="backend must be 'torch' or 'cupy', got 'jax'"):
        MultiStepLIF(backend="jax")
    with pytest.raises(ValueError, match=r"dropout p must be in \[0, 1\), got 1.0"):
        SampleDropout(1.0)
    with pytest.raises(ValueError, match="not a multiple of voters=10"):
        vote(torch.zeros(2, 105))


def test_dropout_mask_is_drawn_once_per_sample_and_reused_over_time() -> None:
    torch.manual_seed(0)
    drop = SampleDropout(0.5)
    x_seq = torch.ones(4, 8, 100)  # [T, N, F]
    out = drop(x_seq)
    assert set(out.unique().tolist()) == {0.0, 2.0}, "kept units scaled by 1 / (1 - p)"
    for t in range(1, 4):
        assert torch.equal(out[t], out[0])
    assert not torch.equal(out[0, 0], out[0, 1]), "each sample draws its own mask"
    assert 0.3 < (out[0] == 0).float().mean() < 0.7
    assert not torch.equal(drop(x_seq), out), "a new call draws a new mask"
    drop.eval()
    assert torch.equal(drop(x_seq), x_seq)


def test_vote_averages_groups_of_ten() -> None:
    out = torch.zeros(2, 110)
    out[0, :10] = 1  # class 0, all voters
    out[1, 100:105] = 1  # class 10, half the voters
    rates = vote(out)
    assert rates.shape == (2, 11)
    assert rates[0].tolist() == [1.0] + [0.0] * 10
    assert rates[1].tolist() == [0.0] * 10 + [0.5]
