"""A conv block's tail as one fused operation: BatchNorm2d -> LIF/PLIF over T -> MaxPool2d(2, 2).

`bn_lif_pool(y, bn, neuron, t)` computes what the layer-by-layer network computes after each
convolution, `max_pool2d(neuron(bn(y).unflatten(0, (t, n))).flatten(0, 1), 2, 2)`, with the
kernels of `dvsgkit.model.fused_cupy`: forward reads the convolution output once and writes only
the pooled spikes; backward recomputes BatchNorm, the membrane and the pooling winner from y.
Autograd keeps y and four numbers per channel, instead of the BatchNorm output, the membrane h,
the spikes and max-pool's int64 indices.

BatchNorm follows `nn.BatchNorm2d` exactly: train mode normalises with the batch statistics over
T*N*H*W and updates running_mean / running_var (unbiased) / num_batches_tracked with the same
momentum rule (momentum=None: cumulative average); eval mode uses the running statistics. The
per-channel work is plain torch here; everything per element is in the kernels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from dvsgkit.model.cupy_runtime import require_cupy
from dvsgkit.model.fused_cupy import PARTS, cupy_launch
from dvsgkit.model.lif import MultiStepLIF
from dvsgkit.model.lif_cupy import KERNEL_DTYPES
from dvsgkit.model.plif import MultiStepPLIF

Launch = Callable[[str, tuple, list, tuple, int], None]  # (kind, spec, tensors, geometry, tasks)


def neuron_spec(neuron: nn.Module) -> tuple[str, tuple, torch.Tensor | None]:
    """(kind, baked-in parameters, decay or None) of a MultiStepLIF / MultiStepPLIF module."""
    if isinstance(neuron, MultiStepPLIF):
        params = (("v_threshold", float(neuron.v_threshold)), ("alpha", float(neuron.alpha)))
        return "plif", params, neuron.w.sigmoid().reshape(()).float()
    if isinstance(neuron, MultiStepLIF):
        params = tuple(
            (name, float(getattr(neuron, name)))
            for name in ("tau", "v_threshold", "v_reset", "alpha")
        )
        return "lif", params, None
    raise TypeError(f"neuron must be a MultiStepLIF or MultiStepPLIF, got {type(neuron).__name__}")


def bn_statistics(y: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, bool]:
    """The per-channel `[mean, invstd]` (float32, `[2, C]`) that `bn(y)` normalises with, and
    whether they are batch statistics (so gradients flow through them). In train mode this
    updates bn's running statistics and num_batches_tracked as `bn(y)` would; y is `[B, C, H, W]`.
    invstd is computed as torch does on the CPU (bit for bit); on a GPU within an ulp of it."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    if not batch:
        invstd = torch.rsqrt(bn.running_var + bn.eps)
        return torch.stack([bn.running_mean, invstd]).float(), False
    if y.numel() // y.shape[1] <= 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {tuple(y.shape)}"
        )
    tracked = not bn.training or bn.track_running_stats
    running = (bn.running_mean, bn.running_var) if tracked else (None, None)
    # On the CPU, 16-bit statistics without running buffers come back rounded to 16 bits
    source = y if y.is_cuda or y.dtype == torch.float32 else y.float()
    mean, var = torch.batch_norm_update_stats(source, *running, factor)  # var is biased
    invstd = torch.sqrt(var.double() + bn.eps).reciprocal().float()
    return torch.stack([mean.float(), invstd]), True


def geometry(y: torch.Tensor, pooled: torch.Tensor, n: int) -> tuple[tuple, int]:
    """The kernels' 13 integers for y `[T*N, C, H, W]` and a pooled-shape tensor, and the number
    of windows (tasks), one per sample, channel and 2x2 window (partial ones included)."""
    _, c, h, w = y.shape
    tasks = n * c * ((h + 1) // 2) * ((w + 1) // 2)
    c_fast = int(y.stride(1) == 1 and c > 1)
    return (n, c, h, w, c_fast, *y.stride(), *pooled.stride()), tasks


def channel_sums(partial: torch.Tensor, geo: tuple) -> torch.Tensor:
    """Per-window partial sums `[parts, tasks]` -> per-channel sums `[parts, C]` (float64)."""
    n, c, _, _, c_fast = geo[:5]
    if c_fast:  # windows ordered (n, row, col, c)
        return partial.view(partial.shape[0], -1, c).sum(1, dtype=torch.float64)
    return partial.view(partial.shape[0], n, c, -1).sum((1, 3), dtype=torch.float64)


def _dense(x: torch.Tensor) -> bool:
    return x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)


def _pooled_like(y: torch.Tensor) -> torch.Tensor:
    """An empty pooled output `[T*N, C, H//2, W//2]` in y's dtype and memory format."""
    b, c, h, w = y.shape
    channels_last = y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((b, c, h // 2, w // 2), dtype=y.dtype, device=y.device, memory_format=fmt)


class BNLIFPool(torch.autograd.Function):
    """BatchNorm-apply + neuron over T + 2x2 max-pool; saves y, `[4, C]` BatchNorm numbers and
    the decay. Inputs: y, weight, bias, decay (PLIF) or None, stats `[2, C]` from
    `bn_statistics`, whether they are batch statistics, steps T, the kernel spec, the launcher."""

    @staticmethod
    def forward(ctx, y, weight, bias, decay, stats, batch: bool, t: int, spec: tuple, launch):
        n = y.shape[0] // t
        bn = torch.cat([stats, weight.detach().float()[None], bias.detach().float()[None]])
        out = _pooled_like(y)
        geo, tasks = geometry(y, out, n)
        if out.numel():
            launch("forward", spec, [y, bn, decay, out], geo, tasks)
        ctx.save_for_backward(y, bn, decay)
        ctx.batch, ctx.t, ctx.spec, ctx.launch = batch, t, spec, launch
        ctx.param_dtype = weight.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        y, bn, decay = ctx.saved_tensors
        n = y.shape[0] // ctx.t
        grad_out = grad_out.to(y.dtype)
        if not _dense(grad_out):  # e.g. an expanded gradient
            grad_out = _pooled_like(y).copy_(grad_out)
        geo, tasks = geometry(y, grad_out, n)
        partial = torch.empty((PARTS[ctx.spec[2]], tasks), dtype=torch.float32, device=y.device)
        grad_y = torch.empty_like(y)
        # One pass over T: dL/dx * scale into grad_y (all of dL/dy in eval mode) and the sums
        ctx.launch(
            "backward", ctx.spec, [y, grad_out, bn, None, decay, grad_y, partial], geo, tasks
        )
        sums = channel_sums(partial, geo)
        if ctx.batch:  # batch statistics add cb + x_hat * cd, from the channel sums, in place
            count = y.numel() // y.shape[1]  # T*N*H*W values per channel
            scale = bn[1].double() * bn[2].double()
            coef = torch.stack([-scale * sums[0] / count, -scale * sums[1] / count]).float()
            finish = [y, grad_y, bn, coef, decay, grad_y, None]
            ctx.launch("backward", ctx.spec, finish, geo, tasks)
        # bias: sum of dL/dx; weight: sum of dL/dx * x_hat; decay: sum of dL/dh * (x - v)
        grad_bias, grad_weight = (s.to(ctx.param_dtype) for s in sums[:2])
        grad_decay = sums[2].sum().float() if decay is not None else None
        return grad_y, grad_weight, grad_bias, grad_decay, None, None, None, None, None


def fused_bn_lif_pool(
    y: torch.Tensor, bn: nn.BatchNorm2d, neuron: nn.Module, t: int, launch: Launch
) -> torch.Tensor:
    """`bn_lif_pool` with the kernel launcher as an argument (the CuPy one, or a test's)."""
    if y.dim() != 4 or y.shape[1] != bn.num_features:
        raise ValueError(
            f"y must be [T*N, {bn.num_features}, H, W] for {bn}, got shape {tuple(y.shape)}"
        )
    if not isinstance(t, int) or t < 1 or y.shape[0] % t:
        raise ValueError(f"y's first dim {y.shape[0]} is not T*N for T={t!r}")
    dtype_name = str(y.dtype).removeprefix("torch.")
    if dtype_name not in KERNEL_DTYPES:
        raise ValueError(f"the fused block supports {tuple(KERNEL_DTYPES)}, got {y.dtype}")
    kind, params, decay = neuron_spec(neuron)
    if not _dense(y):
        y = y.contiguous()  # the kernels index by strides; dL/dy is made like y
    with torch.no_grad():
        stats, batch = bn_statistics(y, bn)
    c = bn.num_features
    weight = bn.weight if bn.weight is not None else y.new_ones(c, dtype=torch.float32)
    bias = bn.bias if bn.bias is not None else y.new_zeros(c, dtype=torch.float32)
    spec = (dtype_name, t, kind, params)
    return BNLIFPool.apply(y, weight, bias, decay, stats, batch, t, spec, launch)


def bn_lif_pool(y: torch.Tensor, bn: nn.BatchNorm2d, neuron: nn.Module, t: int) -> torch.Tensor:
    """y: conv output `[T*N, C, H, W]` (time-major, CUDA, channels_last preferred; float32,
    float16 or bfloat16); bn: the block's BatchNorm2d (train or eval mode); neuron: its
    MultiStepLIF or MultiStepPLIF. Returns the pooled spikes `[T*N, C, H//2, W//2]` (y's dtype
    and memory format) equal to
    `F.max_pool2d(neuron(bn(y).unflatten(0, (t, n))).flatten(0, 1), 2, 2)`, with gradients to
    y, bn.weight, bn.bias and the PLIF's w, and bn's running statistics updated in train mode."""
    require_cupy()
    if not y.is_cuda:
        raise ValueError(f"the fused block needs a CUDA tensor, got one on {y.device}")
    return fused_bn_lif_pool(y, bn, neuron, t, cupy_launch)
