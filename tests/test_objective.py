"""The loss/accuracy step that training and evaluation share, against numbers worked by hand."""

from __future__ import annotations

import pytest
import torch

from dvsgkit.constants import NUM_CLASSES
from dvsgkit.objective import new_sums, score_batch


class _Rates(torch.nn.Module):
    """A 'network' that answers fixed firing rates, whatever the frames."""

    def __init__(self, rates: torch.Tensor) -> None:
        super().__init__()
        self.rates = torch.nn.Parameter(rates)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.rates[: len(frames)]


def test_score_batch_by_hand() -> None:
    rates = torch.zeros(2, NUM_CLASSES)
    rates[0, 3] = 1.0  # sample 0: class 3 at full rate, its label: right, loss 0
    rates[1, 5] = 0.5  # sample 1: class 5 at half rate, its label 7: wrong
    labels = torch.tensor([3, 7])
    net, sums = _Rates(rates), new_sums("cpu")
    loss, preds = score_batch(net, torch.zeros(2, 1), labels, sums, amp=False)
    # Sample 1 misses 0.5 on class 5 and 1.0 on class 7: (0.25 + 1) over 2 * 11 rates.
    assert loss.item() == pytest.approx(1.25 / (2 * NUM_CLASSES))
    assert preds.tolist() == [3, 5]
    assert sums.tolist() == pytest.approx([1.25 / NUM_CLASSES, 1, 2])
    loss.backward()  # the loss keeps its graph: training steps on it
    assert net.rates.grad is not None and net.rates.grad[1, 7] < 0
    score_batch(net, torch.zeros(1, 1), torch.tensor([3]), sums, amp=False)
    assert sums.tolist() == pytest.approx([1.25 / NUM_CLASSES, 2, 3])  # sums add up batches


class _StepVotes(torch.nn.Module):
    """A 'network' whose class-k rate is its input's class-k votes averaged over the steps the
    mask keeps (all steps without one): frames [N, T, 11] of votes."""

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return frames.mean(1)
        keep = mask.T[..., None]  # [N, T, 1]
        return (frames * keep).sum(1) / keep.sum(1)


def test_a_padded_batch_is_scored_over_each_samples_own_frames() -> None:
    """A ragged store's batch comes with its lengths: the rates are averaged over each sample's
    own steps (SpikingJelly's padded_sequence_mask), not over the padding."""
    votes = torch.zeros(2, 4, NUM_CLASSES)  # sample 0: 4 steps; sample 1: 2, then padding
    votes[0, :, 2] = 1.0
    votes[1, :2, 6] = 1.0  # class 6 at full rate over its own 2 steps
    labels = torch.tensor([2, 6])
    sums = new_sums("cpu")
    loss, preds = score_batch(_StepVotes(), votes, labels, sums, amp=False,
                              lengths=torch.tensor([4, 2]))  # fmt: skip
    assert loss.item() == 0.0 and preds.tolist() == [2, 6]
    # Averaged over the padding too, sample 1's class-6 rate would be 0.5.
    padded_loss, _ = score_batch(_StepVotes(), votes, labels, new_sums("cpu"), amp=False)
    assert padded_loss.item() == pytest.approx(0.25 / (2 * NUM_CLASSES))
