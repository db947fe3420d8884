"""A trained GestureNet's eval-mode function, computed for speed on the CPU (no gradient).

GestureNet's spiking layers are written for training: each step builds the surrogate's input,
a float spike, `1 - spike` and the reset as separate full-size tensors, about a dozen passes
over every feature map. Without a gradient the same numbers come from four in-place passes:

    charge   x - v, then v + (x - v) / tau        (PLIF: v + (x - v) * k)     2 passes
    fire     s = (h >= v_threshold) as 0/1 floats                           1 pass
    reset    v = h - h * s                (= h * (1 - s) + 0 * s)            1 pass

and a 2x2 max-pool of binary spikes is the larger of four strided views of s, read once in the
channels-last layout. Every value is the one GestureNet computes (the charge is the same IEEE
operations in the same order; a power-of-two 1/tau multiplies exactly like the division), up to
the sign of a zero membrane, which no threshold above zero can see. It runs one time step of the
whole net at a time, so a few windows' feature maps stay in the caches (docs/predict.md).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from dvsgkit.device import set_cpu_threads
from dvsgkit.model.lif import vote
from dvsgkit.model.net import NUM_OUTPUTS, GestureNet, rates_over_steps, step_votes


class _Neuron:
    """One spiking layer's constants for the in-place step: the charge `h = v + (x - v) * scale`
    (`/ tau` when 1/tau is not exact), the threshold, and reset to 0."""

    def __init__(self, cell: nn.Module, plif: bool) -> None:
        self.v_threshold = float(cell.v_threshold)
        if plif:  # k = sigmoid(w) as the float32 the reference multiplies by
            self.scale, self.divisor = float(cell.w.detach().sigmoid()), None
        else:
            if cell.v_reset != 0.0:
                raise ValueError(
                    f"the inference path resets to 0; this LIF resets to {cell.v_reset}: "
                    "run the network itself"
                )
            exact = math.frexp(cell.tau)[0] == 0.5  # 1/tau exact: multiplying == dividing
            self.scale = 1.0 / cell.tau if exact else None
            self.divisor = None if exact else float(cell.tau)

    def charge(self, x: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
        """`h` from the input `x` (overwritten: it becomes h) and membrane `v` (None at rest)."""
        if v is not None:
            x.sub_(v)
        if self.divisor is not None:
            x.div_(self.divisor)
        else:
            x.mul_(self.scale)
        return x if v is None else x.add_(v)

    def fire(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(spikes as 0/1 in h's dtype, membrane after the hard reset), h reused for the latter."""
        spike = torch.ge(h, self.v_threshold, out=torch.empty_like(h))
        return spike, h.addcmul_(h, spike, value=-1.0)


def pool_spikes(s: torch.Tensor) -> torch.Tensor:
    """`F.max_pool2d(s, 2, 2)` of `s [N, C, H, W]`. For a channels-last tensor with even H, W: the
    elementwise maximum of its four pixel views, which reads it once and writes no indices."""
    n, c, h, w = s.shape
    if h % 2 or w % 2 or not s.is_contiguous(memory_format=torch.channels_last):
        return F.max_pool2d(s, 2, 2)
    rows = s.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2 * c)  # [N, H/2, 2, W/2, 2C]
    pairs = torch.maximum(rows[:, :, 0], rows[:, :, 1])  # the two rows of each window
    return torch.maximum(pairs[..., :c], pairs[..., c:]).permute(0, 3, 1, 2)  # and its columns


class InferenceNet(nn.Module):
    """`net`'s eval-mode forward, step by step with in-place neurons, channels-last convolutions
    and BatchNorm with the running statistics: `forward(x [N, T, 2, H, W], mask=None) ->
    [N, 11]` firing rates, equal to `net.eval()(x, mask)` in step mode. Holds a copy of net's
    layers (eval mode, on net's device); gradients are never recorded."""

    def __init__(self, net: GestureNet) -> None:
        super().__init__()
        if not isinstance(net, GestureNet):
            raise TypeError(f"InferenceNet takes a GestureNet, got {type(net).__name__}")
        self.channels, self.neuron = net.channels, net.neuron
        net = copy.deepcopy(net).eval()
        self.convs = net.convs.to(memory_format=torch.channels_last)
        self.bns, self.fc1, self.fc2 = net.bns, net.fc1, net.fc2
        self.cells = [_Neuron(cell, net.neuron == "plif") for cell in net.neurons()]
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InferenceNet:
        if mode:
            raise RuntimeError("InferenceNet only evaluates; train the GestureNet it came from")
        return super().train(False)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, neuron={self.neuron!r}"

    @torch.no_grad()
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        n, t = x.shape[:2]
        cells = self.cells
        v: list[torch.Tensor | None] = [None] * len(cells)  # at rest before the first step
        rates = x.new_zeros(n, NUM_OUTPUTS)
        for step in range(t):
            y = x[:, step].contiguous(memory_format=torch.channels_last)
            for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
                h = cells[i].charge(bn(conv(y)), v[i])
                spike, v[i] = cells[i].fire(h)
                y = pool_spikes(spike)
            h = cells[-2].charge(self.fc1(y.flatten(1)), v[-2])
            spike, v[-2] = cells[-2].fire(h)
            h = cells[-1].charge(self.fc2(spike), v[-1])
            spike, v[-1] = cells[-1].fire(h)
            rates += step_votes(vote(spike), mask, step)
        return rates_over_steps(rates, mask, t)


def for_inference(net: nn.Module, device: str | torch.device) -> nn.Module:
    """`net` in eval mode on `device`, arranged to run fastest there. On the CPU a GestureNet
    becomes an `InferenceNet` (a copy; the original is left as it is), which computes the very
    values of the GestureNet in step mode (`bench/predict.py` also compares it with
    layer-by-layer mode, which rounds differently). `evaluate` and `predict` both run through
    here, so the two agree on the same samples."""
    device = torch.device(device)
    net = net.eval().to(device)
    if device.type == "cpu":
        set_cpu_threads()  # no more threads than this process's CPUs
    if device.type == "cpu" and isinstance(net, GestureNet) and net.backend == "torch":
        return InferenceNet(net)
    return net
