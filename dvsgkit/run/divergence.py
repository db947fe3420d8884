"""Divergence: a run whose loss or weights stop being finite is stopped, not trained on.

A spiking network hides divergence. A NaN membrane never crosses the threshold, so a net whose
weights or BatchNorm statistics have become NaN or inf still fires a little, its loss stays
finite, and a run at `--lr 1e30` went on writing checkpoints that every later command scored
as if they were a network. So after every training step the loss the step trained on and every
floating-point tensor of the net's state (weights and BatchNorm running statistics) are checked,
on the device, and the first step where one is not finite is recorded there. Nothing is read
back per step: the record is read once per epoch, after the epoch's sums (which the loop reads
anyway), so the check adds no host synchronisation to a step.

With AMP, GradScaler sees inf gradients on purpose and skips those steps; that is not divergence
and is not looked at. What is checked is the unscaled loss, and the weights after the step.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from dvsgkit.errors import InputError

_CODES = 4  # a record is step * _CODES + code; code: 1 the loss, 2 the weights, 3 both


class TrainingDiverged(InputError):
    """A training run's loss or weights became non-finite; the message names the epoch, the
    step, what became non-finite and the fix."""


class FiniteWatch:
    """Per epoch, the first training step after which the loss or the net's state is not
    finite, kept on the device. Make it once the net is on its device and restored."""

    def __init__(self, net: nn.Module, device: torch.device) -> None:
        named = itertools.chain(net.named_parameters(), net.named_buffers())
        kept = [(name, t) for name, t in named if t.is_floating_point()]
        self.names = [name for name, _ in kept]
        self.tensors = [t for _, t in kept]
        self.device = device
        self.start_epoch()

    def start_epoch(self) -> None:
        self.steps = torch.zeros((), dtype=torch.int64, device=self.device)
        self.first = torch.full((), -1, dtype=torch.int64, device=self.device)

    @torch.no_grad()
    def step(self, loss: torch.Tensor) -> None:
        """After an optimizer step that trained on `loss`: device operations only."""
        # One flat copy, then isfinite: exact for NaN and inf alike (a max or a sum of the
        # weights could overflow, or drop a NaN, depending on the kernel).
        state = torch.cat([t.reshape(-1) for t in self.tensors])
        weights_bad = ~torch.isfinite(state).all()
        code = (~torch.isfinite(loss.detach())).long() + 2 * weights_bad.long()
        fresh = (self.first < 0) & (code > 0)
        self.first = torch.where(fresh, self.steps * _CODES + code, self.first)
        self.steps += 1

    def problem(self, epoch: int) -> str | None:
        """What became non-finite in `epoch`, and after which step, or None (the one read of
        the record: once per epoch)."""
        first = int(self.first)
        if first < 0:
            return None
        step, code = divmod(first, _CODES)
        what = []
        if code & 1:
            what.append("the loss")
        if code & 2:
            bad = [n for n, t in zip(self.names, self.tensors, strict=True) if not _finite(t)]
            named = f" ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})" if bad else ""
            what.append(f"the weights{named}")
        return (
            f"training diverged in epoch {epoch}, at step {step + 1} of {int(self.steps)}: "
            f"{' and '.join(what)} became non-finite (NaN or inf)"
        )


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())
