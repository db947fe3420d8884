"""The objective, written once for training and evaluation: the MSE between a network's class
firing rates and the one-hot labels (SpikingJelly's classify_dvsg loss), and the class with the
highest rate as the prediction."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dvsgkit.constants import NUM_CLASSES


def new_sums(device: torch.device | str) -> torch.Tensor:
    """Running totals [loss sum, correct, samples], float64 [3] on `device`: they stay there, so
    no batch waits for the host."""
    return torch.zeros(3, device=device, dtype=torch.float64)


def score_batch(
    net: Any, frames: torch.Tensor, labels: torch.Tensor, sums: torch.Tensor, *, amp: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one batch (frames [B, T, 2, H, W], labels int64 [B]) and add its loss sum, correct
    predictions and size to `sums` (from `new_sums`, on the batch's device; autocast to float16
    there when `amp`). Returns the batch's mean loss (float32, with its graph when gradients are
    on) and the predicted classes, int64 [B]."""
    onehot = F.one_hot(labels, NUM_CLASSES).float()
    with torch.autocast(sums.device.type, dtype=torch.float16, enabled=amp):
        rates = net(frames)  # [B, 11] firing rates
    loss = F.mse_loss(rates.float(), onehot)
    preds = rates.argmax(1)
    n = labels.numel()
    sums[0] += loss.detach() * n
    sums[1] += (preds == labels).sum()
    sums[2] += n
    return loss, preds
