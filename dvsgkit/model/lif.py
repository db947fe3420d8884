"""The reference LIF neuron (ATan surrogate, hard reset, detach_reset), sample dropout and voting.

This is the slow, obviously-correct path (docs/reference.md §5) that the fused CuPy kernels are
tested against.
Tensors crossing these functions are time-major: a sequence is `[T, N, ...]`, one step `[N, ...]`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dvsgkit.constants import ALPHA, TAU, V_RESET, V_THRESHOLD

DROPOUT_P = 0.5
VOTERS = 10  # output neurons per class in the voting layer


class ATanSpike(torch.autograd.Function):
    """Heaviside `s = (h - v_threshold >= 0)` forward; ATan surrogate derivative backward:
    `ds/dh = (alpha / 2) / (1 + (pi / 2 * alpha * (h - v_threshold))^2)`."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, over: torch.Tensor, alpha: float):
        ctx.save_for_backward(over)
        ctx.alpha = alpha
        return (over >= 0).to(over.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_spike: torch.Tensor):
        (over,) = ctx.saved_tensors
        alpha = ctx.alpha
        grad = (alpha / 2) / (1 + (math.pi / 2 * alpha * over).square())
        return grad_spike * grad, None


def surrogate_grad(over: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """`ds/dh` of the ATan surrogate at `over = h - v_threshold` (the formula, for tests/docs)."""
    return (alpha / 2) / (1 + (math.pi / 2 * alpha * over).square())


def lif_step(
    x: torch.Tensor,
    v: torch.Tensor | float,
    *,
    tau: float = TAU,
    v_threshold: float = V_THRESHOLD,
    v_reset: float = V_RESET,
    alpha: float = ALPHA,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LIF step on `x [N, ...]` from membrane `v` (a tensor like x, or the float v_reset at
    t = 0). Returns `(spike, v_next)`, both like x.

    charge `h = v + (x - (v - v_reset)) / tau`; fire `s = (h >= v_threshold)`;
    hard reset `v_next = h * (1 - s) + v_reset * s` with `s` detached (detach_reset), so the
    gradient reaches h through the reset only as `dv_next/dh = 1 - s`.
    """
    h = v + (x - (v - v_reset)) / tau
    return fire_and_reset(h, v_threshold=v_threshold, v_reset=v_reset, alpha=alpha)


def fire_and_reset(
    h: torch.Tensor,
    *,
    v_threshold: float = V_THRESHOLD,
    v_reset: float = V_RESET,
    alpha: float = ALPHA,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fire and hard-reset a charged membrane `h`: `(spike, v_next)`, shared by every neuron
    here (LIF and PLIF differ only in how they charge). `s = (h >= v_threshold)` with the ATan
    surrogate; `v_next = h * (1 - s) + v_reset * s` with `s` detached (detach_reset)."""
    spike = ATanSpike.apply(h - v_threshold, alpha)
    s = spike.detach()
    v_next = h * (1.0 - s) + v_reset * s
    return spike, v_next


def lif_multistep(
    x_seq: torch.Tensor,
    *,
    tau: float = TAU,
    v_threshold: float = V_THRESHOLD,
    v_reset: float = V_RESET,
    alpha: float = ALPHA,
) -> torch.Tensor:
    """The reference multi-step LIF: `x_seq [T, N, ...]` -> spikes `[T, N, ...]` (x's dtype),
    starting from `v = v_reset`. Autograd runs through the plain loop of `lif_step`."""
    if x_seq.dim() < 2:
        raise ValueError(f"x_seq must be time-major [T, N, ...], got shape {tuple(x_seq.shape)}")
    v: torch.Tensor | float = v_reset
    spikes = []
    # unbind, not x_seq[t]: each indexing op's backward would zero-fill a whole [T, ...] tensor
    # (T^2 traffic); unbind's backward stacks the T step gradients once.
    for x in x_seq.unbind(0):
        spike, v = lif_step(x, v, tau=tau, v_threshold=v_threshold, v_reset=v_reset, alpha=alpha)
        spikes.append(spike)
    return torch.stack(spikes)


class LIFCell(nn.Module):
    """A LIF neuron as parameters + state + step: `cell(x [N, ...])` advances one time step.
    Call `reset()` before a new sequence (the membrane then restarts at v_reset)."""

    def __init__(
        self,
        tau: float = TAU,
        v_threshold: float = V_THRESHOLD,
        v_reset: float = V_RESET,
        alpha: float = ALPHA,
    ) -> None:
        super().__init__()
        if tau <= 1.0:
            raise ValueError(f"tau must be > 1 (decay 1 - 1/tau in (0, 1)), got {tau}")
        self.tau, self.v_threshold, self.v_reset, self.alpha = tau, v_threshold, v_reset, alpha
        self.v: torch.Tensor | float = v_reset

    def reset(self) -> None:
        self.v = self.v_reset

    def advance(
        self, x: torch.Tensor, v: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from an explicit membrane `v`, leaving `self.v` alone: `(spike, v_next)`."""
        return lif_step(
            x, v, tau=self.tau, v_threshold=self.v_threshold, v_reset=self.v_reset, alpha=self.alpha
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spike, self.v = self.advance(x, self.v)
        return spike

    def extra_repr(self) -> str:
        return f"tau={self.tau}, v_threshold={self.v_threshold}, v_reset={self.v_reset}"


def check_backend(backend: str) -> str:
    """A spiking layer's backend, checked: "torch", or "cupy" when CuPy can run (else the error
    names the package to install)."""
    if backend not in ("torch", "cupy"):
        raise ValueError(f"backend must be 'torch' or 'cupy', got {backend!r}")
    if backend == "cupy":
        from dvsgkit.model.cupy_runtime import require_cupy

        require_cupy()
    return backend


class MultiStepLIF(LIFCell):
    """A LIF layer over a whole time-major sequence `[T, N, ...]`, stateless between calls.

    backend "torch" runs `lif_multistep`; "cupy" runs the fused CUDA kernels of
    `dvsgkit.model.lif_cupy` (CUDA tensors only; fails with the package to install otherwise).
    `step(x)` is the single-step view of the same neuron (it uses and updates `self.v`).
    """

    def __init__(self, backend: str = "torch", **kwargs: float) -> None:
        super().__init__(**kwargs)
        self.backend = check_backend(backend)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        params = dict(
            tau=self.tau, v_threshold=self.v_threshold, v_reset=self.v_reset, alpha=self.alpha
        )
        if self.backend == "cupy":
            from dvsgkit.model.lif_cupy import lif_multistep_cupy

            return lif_multistep_cupy(x_seq, **params)
        return lif_multistep(x_seq, **params)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"


def dropout_mask(like: torch.Tensor, p: float = DROPOUT_P) -> torch.Tensor:
    """A dropout mask shaped like one time step `[N, ...]`: 0 with probability p, else 1/(1-p).
    Drawn the way SpikingJelly's `layer.Dropout` draws it, so a seeded run draws the same mask."""
    return F.dropout(torch.ones_like(like.detach()), p, training=True)


class SampleDropout(nn.Module):
    """Dropout whose mask is drawn once per sample and reused for every time step (reference.md §5);
    identity in eval mode. `forward(x_seq [T, N, ...])` applies one mask `[N, ...]` to all T;
    step-by-step code calls `mask(x[0])` once and multiplies each step by it."""

    def __init__(self, p: float = DROPOUT_P) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = p

    def mask(self, like: torch.Tensor) -> torch.Tensor | None:
        """The mask for one sequence, or None in eval mode (nothing to multiply)."""
        if not self.training or self.p == 0.0:
            return None
        return dropout_mask(like, self.p)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        mask = self.mask(x_seq[0])
        return x_seq if mask is None else x_seq * mask  # mask [N, ...] broadcasts over T

    def extra_repr(self) -> str:
        return f"p={self.p}"


def vote(out: torch.Tensor, voters: int = VOTERS) -> torch.Tensor:
    """Voting layer: `[..., K * voters]` -> `[..., K]`, the mean of each consecutive group."""
    if out.shape[-1] % voters:
        raise ValueError(f"last dim {out.shape[-1]} is not a multiple of voters={voters}")
    return out.unflatten(-1, (-1, voters)).mean(-1)
