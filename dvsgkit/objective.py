"""The objective and the training step, written once for training and evaluation: the MSE between
a network's class firing rates and the one-hot labels (SpikingJelly's classify_dvsg loss), the
class with the highest rate as the prediction, one pass over a loader, and the check that the
steps leave the loss and the weights finite."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dvsgkit.constants import NUM_CLASSES
from dvsgkit.errors import InputError


def new_sums(device: torch.device | str) -> torch.Tensor:
    """Running totals [loss sum, correct, samples], float64 [3] on `device`: they stay there, so
    no batch waits for the host."""
    return torch.zeros(3, device=device, dtype=torch.float64)


def score_batch(
    net: Any,
    frames: torch.Tensor,
    labels: torch.Tensor,
    sums: torch.Tensor,
    *,
    amp: bool,
    lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one batch (frames [B, T, 2, H, W], labels int64 [B]; a ragged store's batch also
    `lengths` [B], each sample's own frames, the rest padding) and add its loss sum, correct
    predictions and size to `sums` (from `new_sums`, on the batch's device; autocast to float16
    there when `amp`). Returns the batch's mean loss (float32, with its graph when gradients are
    on) and the predicted classes, int64 [B]."""
    from dvsgkit.data import padded_sequence_mask

    onehot = F.one_hot(labels, NUM_CLASSES).float()
    with torch.autocast(sums.device.type, dtype=torch.float16, enabled=amp):
        if lengths is None:
            rates = net(frames)  # [B, 11] firing rates
        else:  # averaged over each sample's own frames (SpikingJelly's padded_sequence_mask)
            rates = net(frames, padded_sequence_mask(lengths, frames.shape[1]))
    loss = F.mse_loss(rates.float(), onehot)
    preds = rates.argmax(1)
    n = labels.numel()
    sums[0] += loss.detach() * n
    sums[1] += (preds == labels).sum()
    sums[2] += n
    return loss, preds


def score_batches(
    net: Any, loader: Any, sums: torch.Tensor, amp: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`score_batch` over each batch of `loader` ((frames, labels), or a ragged store's
    (frames, labels, lengths)): yields its (loss, predictions, labels)."""
    for frames, labels, *lengths in loader:
        ragged = {"lengths": lengths[0]} if lengths else {}
        yield *score_batch(net, frames, labels, sums, amp=amp, **ragged), labels


def run_epoch(
    net: nn.Module,
    loader: Any,
    device: torch.device,
    amp: bool,
    bar: Any,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
    watch: FiniteWatch | None = None,
) -> torch.Tensor:
    """One pass over `loader`; trains when an optimizer is given, `watch` recording whether each
    step left the loss and the weights finite. Returns [loss sum, correct, samples] on the
    device: the sums (and the watch's record) stay there, so that no step waits for the host."""
    sums = new_sums(device)
    for loss, _, labels in score_batches(net, loader, sums, amp):
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if watch is not None:
                watch.step(loss)
        bar.update(labels.numel())
    return sums


# A spiking network hides divergence. A NaN membrane never crosses the threshold, so a net whose
# weights or BatchNorm statistics have become NaN or inf still fires a little and its loss stays
# finite: a run at `--lr 1e30` went on writing checkpoints that every later command scored as a
# network. So after every training step the loss it trained on and every floating-point tensor of
# the net's state are checked, on the device, and the first step where one is not finite is
# recorded there; the record is read once per epoch, after the epoch's sums, so no step waits for
# the host. With AMP, GradScaler's own skipped steps (inf gradients) are not divergence: what is
# checked is the unscaled loss, and the weights after the step.

_CODES = 4  # a record is step * _CODES + code; code: 1 the loss, 2 the weights, 3 both


class TrainingDiverged(InputError):
    """A run's loss or weights became non-finite: the epoch, the step, what, and the fix."""


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
            bad = [n for n, t in zip(self.names, self.tensors, strict=True)
                   if not bool(torch.isfinite(t).all())]  # fmt: skip
            named = f" ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})" if bad else ""
            what.append(f"the weights{named}")
        return (
            f"training diverged in epoch {epoch}, at step {step + 1} of {int(self.steps)}: "
            f"{' and '.join(what)} became non-finite (NaN or inf)"
        )
