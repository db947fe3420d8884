"""GestureNet: the PLIF-paper spiking CNN for DVS128 Gesture, step-by-step or layer-by-layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dvsgkit.constants import NUM_CLASSES, SENSOR_HEIGHT
from dvsgkit.model.lif import (
    ALPHA,
    TAU,
    V_RESET,
    V_THRESHOLD,
    VOTERS,
    MultiStepLIF,
    SampleDropout,
    vote,
)
from dvsgkit.model.plif import INIT_TAU, MultiStepPLIF

MODES = ("step", "layer")
BACKENDS = ("torch", "cupy")
NEURONS = ("lif", "plif")
SPIKING_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc1", "fc2")  # for reports
NUM_OUTPUTS = NUM_CLASSES  # the last layer has NUM_OUTPUTS * VOTERS neurons
CONV_BLOCKS = 5  # each halves H and W: 128 -> 4
INPUT_SIZE = SENSOR_HEIGHT  # square frames: the sensor is 128 x 128
INPUT_CHANNELS = 2  # ON and OFF event counts
# Every way GestureNet runs, as (mode, backend, fused, compile_steps), with either neuron. Any
# other combination is refused by the first of REFUSALS that holds for it: (an option set where
# it cannot run, why and the fix).
EXECUTIONS = {
    ("step", "torch", False, False): "one time step at a time through the whole net (PythonNet)",
    ("step", "torch", False, True): "the same, each step after the first compiled (CUDA graphs)",
    ("layer", "torch", False, False): "each layer on all T*N inputs at once (CextNet)",
    ("layer", "cupy", False, False): "the same, each spiking layer as two CuPy kernels",
    ("layer", "cupy", True, False): "the same, BN + neuron + max-pool of each conv block fused",
}
_FUSED_NEEDS = "fused=True runs the fused CuPy BatchNorm + LIF + max-pool kernels: use it with"
REFUSALS = (
    (lambda mode, backend, fused, compile_steps: backend == "cupy" and mode != "layer",
     "backend 'cupy' runs whole sequences: use mode='layer' with it"),
    (lambda mode, backend, fused, compile_steps: fused and backend != "cupy",
     f"{_FUSED_NEEDS} mode='layer', backend='cupy'"),
    (lambda mode, backend, fused, compile_steps: compile_steps and mode != "step",
     "compile_steps compiles the step-by-step network: use mode='step'"),
)  # fmt: skip
# NHWC convolutions with 2 input channels miss cuDNN's fast kernels (fp16 tensor cores take
# channels in multiples of 8): the channels_last path zero-pads the input and conv1's weight.
PADDED_INPUT_CHANNELS = 8


class GestureNet(nn.Module):
    """5 x [Conv3x3 -> BN -> LIF -> MaxPool2] -> Dropout -> Linear -> LIF -> Dropout -> Linear ->
    LIF -> voting (docs/reference.md §5), with `channels` = C feature maps.

    mode "step" feeds one time step at a time through the whole net (classify_dvsg's PythonNet);
    mode "layer" runs each Conv/BN/pool/Linear on all T*N inputs at once and each LIF layer over
    all T in one call (classify_dvsg's CextNet), with backend "torch" (any device) or "cupy" (the
    fused CUDA kernels; CUDA tensors only). Every mode/backend has the same parameters and
    state_dict, and computes the same function in eval mode. In train mode BatchNorm normalises
    over N per step in "step" mode but over T*N in "layer" mode, exactly as classify_dvsg's two
    networks differ.

    neuron "lif" (tau 2, parameter-free) or "plif" (one learnable time constant per spiking
    layer, starting at `init_tau`; state_dict keys `plif.{0..6}.w`). `hidden` is fc1's width
    (default C*2*2, classify_dvsg's; SpikingJelly's DVSGestureNet uses 512) and `bias` gives both
    Linear layers a bias (DVSGestureNet's have one). The defaults are classify_dvsg's network.

    `size` is the frames' side (128, 64 or 32: a frame store's `--size`); fc1 takes the
    C*(size/32)^2 features the five poolings leave.

    `forward(x [N, T, 2, size, size] float, mask=None) -> [N, 11]` class firing rates averaged
    over T; with `mask` (bool [T, N], SpikingJelly's `padded_sequence_mask` of a padded batch)
    averaged over each sample's own steps only. Padding follows a sample's frames, so its
    steps never reach the outputs of the sample's own (BatchNorm's batch statistics in train
    mode do see the padded frames, as in SpikingJelly's padded training). The neurons'
    membranes live only inside forward, so every call starts from rest.

    After `net.to(memory_format=torch.channels_last)` every convolution, BatchNorm, LIF and
    max-pool runs on NHWC tensors; on CUDA the input too: it is laid out NHWC once, its 2
    channels zero-padded to 8, and conv1 runs with its weight zero-padded alike (same function,
    same state_dict). `fused=True` (backend "cupy" only) runs BatchNorm + LIF + max-pool of
    each conv block as one fused kernel pair (`dvsgkit.model.fused_block.bn_lif_pool`).
    `compile_steps=True` (mode "step") compiles each time step after the first with
    torch.compile into fused kernels replayed as CUDA graphs (`dvsgkit.model.graphs`); where
    that cannot run (CPU, no Triton) the steps run eagerly as without it.
    """

    def __init__(
        self,
        channels: int = 128,
        mode: str = "layer",
        backend: str = "torch",
        *,
        neuron: str = "lif",
        init_tau: float = INIT_TAU,
        hidden: int | None = None,
        bias: bool = False,
        fused: bool = False,
        compile_steps: bool = False,
        size: int = INPUT_SIZE,
    ) -> None:
        super().__init__()
        if not isinstance(size, int) or size < 1 << CONV_BLOCKS or size % (1 << CONV_BLOCKS):
            raise ValueError(f"size must be a multiple of {1 << CONV_BLOCKS}, got {size!r}")
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        hidden = channels * 2 * 2 if hidden is None else hidden
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        if neuron not in NEURONS:
            raise ValueError(f"neuron must be one of {NEURONS}, got {neuron!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        execution = (mode, backend, bool(fused), bool(compile_steps))
        if execution not in EXECUTIONS:
            raise ValueError(next(why for refuses, why in REFUSALS if refuses(*execution)))
        self.channels, self.mode, self.backend, self.size = channels, mode, backend, size
        self.compile_steps = bool(compile_steps)
        self.neuron, self.hidden, self.bias, self.fused = neuron, hidden, bias, bool(fused)
        self.convs = nn.ModuleList(
            nn.Conv2d(INPUT_CHANNELS if i == 0 else channels, channels, 3, padding=1, bias=False)
            for i in range(CONV_BLOCKS)
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(CONV_BLOCKS))
        side = size >> CONV_BLOCKS  # 4 at 128
        self.drop1 = SampleDropout()
        self.fc1 = nn.Linear(channels * side * side, hidden, bias=bias)
        self.drop2 = SampleDropout()
        self.fc2 = nn.Linear(hidden, NUM_OUTPUTS * VOTERS, bias=bias)
        layer_backend = backend if mode == "layer" else "torch"
        if neuron == "lif":
            # Parameter-free, so it adds nothing to the state_dict and one module serves all
            # layers; checks CuPy up front for "cupy".
            self.lif = MultiStepLIF(
                backend=layer_backend,
                tau=TAU,
                v_threshold=V_THRESHOLD,
                v_reset=V_RESET,
                alpha=ALPHA,
            )
        else:
            self.plif = nn.ModuleList(
                MultiStepPLIF(backend=layer_backend, init_tau=init_tau) for _ in SPIKING_LAYERS
            )

    def neurons(self) -> list[nn.Module]:
        """The spiking layer of each of SPIKING_LAYERS, in order (the LIF module is shared)."""
        if self.neuron == "lif":
            return [self.lif] * len(SPIKING_LAYERS)
        return list(self.plif)

    def learned_taus(self) -> dict[str, float]:
        """{layer: membrane time constant} of a PLIF net (one host sync); {} for the LIF."""
        if self.neuron == "lif":
            return {}
        taus = torch.stack([cell.tau() for cell in self.plif]).tolist()
        return dict(zip(SPIKING_LAYERS, taus, strict=True))

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, mode={self.mode!r}, backend={self.backend!r}, "
            f"neuron={self.neuron!r}, hidden={self.hidden}, bias={self.bias}"
            + (f", size={self.size}" if self.size != INPUT_SIZE else "")
            + (", fused=True" if self.fused else "")
            + (", compile_steps=True" if self.compile_steps else "")
        )

    @property
    def channels_last(self) -> bool:
        """Whether the weights are NHWC (`net.to(memory_format=torch.channels_last)`): forward
        then lays the input out NHWC too, so no convolution sees a mixed layout."""
        return self.convs[0].weight.is_contiguous(memory_format=torch.channels_last)

    def _pads_input(self, x: torch.Tensor) -> bool:
        """Whether forward lays x out NHWC with 8 channels: on CUDA with NHWC weights. On the
        CPU the padded conv1 costs more than the layout saves."""
        return self.channels_last and x.is_cuda

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """`x [N, T, 2, H, W]` as the time-major `[T, N, C, H, W]` conv1 reads: as given, or
        (`_pads_input`) each step an NHWC `[N, 8, H, W]` with channels 2..7 zero."""
        if not self._pads_input(x):
            return x.transpose(0, 1)
        n, t, c, h, w = x.shape
        padded = x.new_zeros(t, n, h, w, PADDED_INPUT_CHANNELS)
        padded[..., :c] = x.permute(1, 0, 3, 4, 2)  # one strided copy; autograd reaches x
        return padded.permute(0, 1, 4, 2, 3)

    def _conv1(self, y: torch.Tensor) -> torch.Tensor:
        """conv1 on `_input`'s steps; on the padded input with its weight padded alike."""
        conv = self.convs[0]
        if y.shape[1] == conv.in_channels:
            return conv(y)
        pad = y.shape[1] - conv.in_channels
        weight = F.pad(conv.weight, (0, 0, 0, 0, 0, pad))  # zero input channels: same sums
        weight = weight.contiguous(memory_format=torch.channels_last)
        return F.conv2d(y, weight, conv.bias, conv.stride, conv.padding)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 5 or x.shape[2] != 2 or x.shape[3:] != (self.size, self.size):
            raise ValueError(
                f"GestureNet takes frames [N, T, 2, {self.size}, {self.size}], "
                f"got shape {tuple(x.shape)}"
            )
        if mask is not None and tuple(mask.shape) != tuple(x.shape[1::-1]):
            raise ValueError(f"mask must be [T, N] = {list(x.shape[1::-1])}, got "
                             f"{list(mask.shape)}")  # fmt: skip
        if self.backend == "cupy" and not x.is_cuda:
            raise ValueError(
                f"backend 'cupy' needs CUDA tensors, got input on {x.device}; move the model "
                "and the data to a CUDA device, or build GestureNet(backend='torch')"
            )
        if self.mode == "layer":
            return self._forward_layer(x, mask)
        return self._forward_step(x, mask)

    def _forward_layer(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        n, t = x.shape[:2]
        neurons = self.neurons()
        y = self._input(x).flatten(0, 1)  # [T*N, 2 (or 8), H, W], time-major
        blocks = zip(self.convs, self.bns, neurons[:CONV_BLOCKS], strict=True)
        for i, (conv, bn, cell) in enumerate(blocks):
            y = self._conv1(y) if i == 0 else conv(y)  # [T*N, C, H, W]
            if self.fused:
                y = _bn_lif_pool()(y, bn, cell, t)
                continue
            y = bn(y)
            y = cell(y.unflatten(0, (t, n))).flatten(0, 1)  # neuron over T on [T, N, C, H, W]
            y = F.max_pool2d(y, 2, 2)  # [T*N, C, H/2, W/2]
        y = y.reshape(t, n, -1)  # [T, N, C*4*4] in NCHW order (a small copy when NHWC)
        y = neurons[-2](self.fc1(self.drop1(y)))  # [T, N, hidden]
        y = neurons[-1](self.fc2(self.drop2(y)))  # [T, N, 110]
        if mask is None:
            return vote(y).mean(0)  # [N, 11]
        return masked_mean(vote(y), mask)

    def _compiles_steps(self, x: torch.Tensor) -> bool:
        """Whether forward runs the compiled time step (`graphs`): asked for, and it can run."""
        from dvsgkit.model.graphs import compile_unavailable_reason, plain_batchnorms

        return (
            self.compile_steps
            and compile_unavailable_reason(x.device) is None
            and plain_batchnorms(self.bns)
        )

    def _forward_step(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        t = x.shape[1]
        # One membrane per spiking layer (5 conv + 2 fc), at rest before the first step.
        v: list[torch.Tensor | float] = [V_RESET] * len(SPIKING_LAYERS)
        steps = self._input(x)  # [T, N, 2 (or 8), H, W]
        compiled = t > 1 and self._compiles_steps(x)
        # Compiled in train mode, BatchNorm's running statistics are updated outside the
        # steps (graphs.update_running_stats): in place inside a graph, or through modules that
        # saved them for backward, the updates fail backward's in-place version check.
        stats_out = compiled and self.training
        if compiled:
            from dvsgkit.model import graphs

            graphs.mark_step_begin()
            later_step = graphs.compiled(time_step)
        # The first step runs eagerly: it draws the dropout masks and starts from rest.
        votes, v, masks, stats = time_step(self, steps[0], v, None, stats_out)
        rates = x.new_zeros(x.shape[0], NUM_OUTPUTS) + step_votes(votes, mask, 0)  # in x's dtype
        for step in range(1, t):
            if stats_out:
                graphs.update_running_stats(self.bns, stats)
            if compiled:
                votes, v, _, stats = later_step(self, steps[step], v, masks, stats_out)
            else:
                votes, v, _, _ = time_step(self, steps[step], v, masks)
            rates = rates + step_votes(votes, mask, step)  # [N, 11]
        if stats_out:
            graphs.update_running_stats(self.bns, stats)
        return rates_over_steps(rates, mask, t)


def rates_over_steps(total: torch.Tensor, mask: torch.Tensor | None, t: int) -> torch.Tensor:
    """Votes [N, 11] summed over the steps as firing rates: divided by T, or with `mask` [T, N]
    by each sample's own number of steps."""
    return total / (t if mask is None else mask.sum(0)[:, None])


def step_votes(votes: torch.Tensor, mask: torch.Tensor | None, step: int) -> torch.Tensor:
    """A time step's votes [N, 11], zero for the samples whose frames ended before `step`."""
    return votes if mask is None else votes * mask[step, :, None]


def masked_mean(votes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of votes [T, N, 11] over each sample's own steps (mask [T, N]): [N, 11]."""
    return rates_over_steps((votes * mask[..., None]).sum(0), mask, len(mask))


def time_step(
    net: GestureNet,
    y: torch.Tensor,
    v: list[torch.Tensor | float],
    masks: tuple[torch.Tensor | None, torch.Tensor | None] | None,
    stats_out: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor], tuple, list[torch.Tensor]]:
    """One time step of the step-by-step network: input `y [N, 2 (or 8), H, W]` and the
    membranes `v` of the 7 spiking layers -> (votes [N, 11], new membranes, dropout masks,
    batch statistics). masks None (the first step) draws the masks, once per sample, reused for
    every later step. stats_out (train mode): BatchNorm normalises with the batch statistics
    but leaves its running statistics alone and returns [mean, unbiased var] per conv block
    (`graphs.update_running_stats` applies them); else the list is empty."""
    neurons = net.neurons()
    v = list(v)
    stats: list[torch.Tensor] = []
    for i, (conv, bn) in enumerate(zip(net.convs, net.bns, strict=True)):
        y = net._conv1(y) if i == 0 else conv(y)
        if stats_out:
            var, mean = torch.var_mean(y.detach().float(), dim=(0, 2, 3), correction=1)
            stats += [mean, var]
            y = F.batch_norm(y, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        else:
            y = bn(y)
        spike, v[i] = neurons[i].advance(y, v[i])
        y = F.max_pool2d(spike, 2, 2)
    y = y.flatten(1)  # [N, C*4*4]
    mask1 = net.drop1.mask(y) if masks is None else masks[0]
    spike, v[-2] = neurons[-2].advance(net.fc1(y if mask1 is None else y * mask1), v[-2])
    mask2 = net.drop2.mask(spike) if masks is None else masks[1]
    y = spike if mask2 is None else spike * mask2
    spike, v[-1] = neurons[-1].advance(net.fc2(y), v[-1])
    return vote(spike), v, (mask1, mask2), stats


def _bn_lif_pool():
    """The fused BatchNorm + LIF + max-pool block, imported when a fused net first runs."""
    from dvsgkit.model.fused_block import bn_lif_pool

    return bn_lif_pool
