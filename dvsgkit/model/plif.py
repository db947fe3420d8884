"""The Parametric LIF neuron (PLIF, Fang et al., ICCV 2021): a LIF whose decay is learned.

Each spiking layer holds one learnable scalar `w`. Its decay is `k = sigmoid(w)`, so its membrane
time constant is `tau = 1 / k = 1 + exp(-w)`, and `init_tau` sets `w = -log(init_tau - 1)`
(init_tau 2 gives w = 0, k = 1/2: the LIF of `lif.py`). With decay_input and a hard reset to 0,
as SpikingJelly's `ParametricLIFNode(v_reset=0.0)`:

    charge  h[t] = v[t-1] + (x[t] - v[t-1]) * k
    fire    s[t] = (h[t] >= v_threshold)               ATan surrogate, as the LIF
    reset   v[t] = h[t] * (1 - s[t])                   s detached (detach_reset)

Firing and reset are the LIF's own code (`lif.fire_and_reset`). Tensors are time-major as in
`lif.py`: a sequence is `[T, N, ...]`, one step `[N, ...]`; `decay` is a 0-dim tensor.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dvsgkit.model.lif import ALPHA, V_THRESHOLD, check_backend, fire_and_reset

INIT_TAU = 2.0  # the paper's initial membrane time constant
V_RESET = 0.0  # PLIF here always resets to 0 (the charge formula above assumes it)


def init_w(init_tau: float) -> float:
    """The `w` whose decay `sigmoid(w)` is `1 / init_tau`: `-log(init_tau - 1)`."""
    if not (math.isfinite(init_tau) and init_tau > 1.0):
        raise ValueError(
            f"init_tau must be a finite number > 1 (decay 1/tau in (0, 1)), got {init_tau}"
        )
    return -math.log(init_tau - 1.0)


def tau_of(w: torch.Tensor) -> torch.Tensor:
    """Membrane time constant of a PLIF layer with parameter `w`: `1 / sigmoid(w) = 1 + exp(-w)`."""
    return 1.0 + torch.exp(-w)


def plif_step(
    x: torch.Tensor,
    v: torch.Tensor | float,
    decay: torch.Tensor,
    *,
    v_threshold: float = V_THRESHOLD,
    alpha: float = ALPHA,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One PLIF step on `x [N, ...]` from membrane `v` (a tensor like x, or 0.0 at t = 0) with
    decay `k = sigmoid(w)` (0-dim). Returns `(spike, v_next)`, both like x.
    The gradient reaches `decay` through `dh/dk = x - v` at every step."""
    h = v + (x - v) * decay
    return fire_and_reset(h, v_threshold=v_threshold, v_reset=V_RESET, alpha=alpha)


def plif_multistep(
    x_seq: torch.Tensor,
    decay: torch.Tensor,
    *,
    v_threshold: float = V_THRESHOLD,
    alpha: float = ALPHA,
) -> torch.Tensor:
    """The reference multi-step PLIF: `x_seq [T, N, ...]` -> spikes `[T, N, ...]` (x's dtype),
    from v = 0, with decay `k` (0-dim tensor, usually `w.sigmoid()`). Plain autograd loop."""
    if x_seq.dim() < 2:
        raise ValueError(f"x_seq must be time-major [T, N, ...], got shape {tuple(x_seq.shape)}")
    if decay.numel() != 1:
        raise ValueError(f"decay must be one value per layer, got shape {tuple(decay.shape)}")
    decay = decay.reshape(())
    v: torch.Tensor | float = V_RESET
    spikes = []
    for x in x_seq.unbind(0):  # unbind, not x_seq[t]: see lif.lif_multistep
        spike, v = plif_step(x, v, decay, v_threshold=v_threshold, alpha=alpha)
        spikes.append(spike)
    return torch.stack(spikes)


class PLIFCell(nn.Module):
    """A PLIF neuron layer as parameters + state + step: one learnable `w` (0-dim, float32, the
    state_dict key `w` as in SpikingJelly), the membrane `v`, and `cell(x [N, ...])` advancing
    one step. Call `reset()` before a new sequence."""

    def __init__(
        self, init_tau: float = INIT_TAU, v_threshold: float = V_THRESHOLD, alpha: float = ALPHA
    ) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(init_w(init_tau), dtype=torch.float32))
        self.init_tau, self.v_threshold, self.alpha = init_tau, v_threshold, alpha
        self.v: torch.Tensor | float = V_RESET

    def reset(self) -> None:
        self.v = V_RESET

    def tau(self) -> torch.Tensor:
        """The learned membrane time constant, 0-dim, detached (for reports)."""
        return tau_of(self.w.detach())

    def advance(
        self, x: torch.Tensor, v: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from an explicit membrane `v`, leaving `self.v` alone: `(spike, v_next)`."""
        return plif_step(x, v, self.w.sigmoid(), v_threshold=self.v_threshold, alpha=self.alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spike, self.v = self.advance(x, self.v)
        return spike

    def extra_repr(self) -> str:
        return f"init_tau={self.init_tau}, v_threshold={self.v_threshold}, v_reset={V_RESET}"


class MultiStepPLIF(PLIFCell):
    """A PLIF layer over a whole time-major sequence `[T, N, ...]`, stateless between calls.

    backend "torch" runs `plif_multistep`; "cupy" runs the fused kernels of
    `dvsgkit.model.plif_cupy` (CUDA tensors only), which read the decay on the device.
    `step(x)` is the single-step view of the same neuron (it uses and updates `self.v`).
    """

    def __init__(self, backend: str = "torch", **kwargs: float) -> None:
        super().__init__(**kwargs)
        self.backend = check_backend(backend)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        params = dict(v_threshold=self.v_threshold, alpha=self.alpha)
        if self.backend == "cupy":
            from dvsgkit.model.plif_cupy import plif_multistep_cupy

            return plif_multistep_cupy(x_seq, self.w.sigmoid(), **params)
        return plif_multistep(x_seq, self.w.sigmoid(), **params)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"
