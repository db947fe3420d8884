"""Fewer kernel launches for the step-by-step network: each time step compiled once.

Step by step, GestureNet launches ~100 small kernels per time step forward (and as many
backward), T times per batch; at batch 16 the GPU waits on Python and the launch queue.
`torch.compile(mode="reduce-overhead")` fuses each step's elementwise work (BatchNorm apply,
the LIF's charge/fire/reset, dropout) into a few generated kernels and replays them as CUDA
graphs. Only steps after the first are compiled: the first draws the dropout masks and starts
the membranes from rest (a float), so it runs eagerly and every later step has one shape and one
set of input types.

Used only where it can run: a CUDA tensor, and a torch whose compiler has Triton for CUDA.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import torch
from torch import nn

COMPILE_MODE = "reduce-overhead"  # inductor kernels, replayed as CUDA graphs


def compile_unavailable_reason(device: torch.device) -> str | None:
    """None when compiled steps can run on `device`; else why not (they then run eagerly)."""
    if device.type != "cuda":
        return f"compiled steps run on CUDA only, not on {device.type}"
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if importlib.util.find_spec("triton") is None:
        return "torch.compile needs Triton for CUDA kernels (pip install triton)"
    return None


@functools.cache
def compiled(fn: Callable, mode: str = COMPILE_MODE) -> Callable:
    """`torch.compile(fn)`, one compiled function per (fn, mode) for the whole process: every
    net shares its guards and cached graphs (dynamo recompiles per module instance)."""
    return torch.compile(fn, mode=mode, dynamic=False)


def mark_step_begin() -> None:
    """Tell CUDA graph trees a new iteration starts: the previous one's outputs may be reused."""
    mark = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)
    if mark is not None:
        mark()


def plain_batchnorms(bns: nn.ModuleList) -> bool:
    """True when every BatchNorm is a plain nn.BatchNorm2d tracking running statistics with one
    and the same momentum: what `update_running_stats` reproduces (anything else, SyncBatchNorm
    included, is left to run eagerly)."""
    return all(
        type(bn) is nn.BatchNorm2d
        and bn.momentum is not None
        and bn.momentum == bns[0].momentum
        and bn.track_running_stats
        for bn in bns
    )


def update_running_stats(bns: nn.ModuleList, stats: list[torch.Tensor]) -> None:
    """What BatchNorm2d's train-mode forward does to its buffers, from a compiled step's
    [mean, unbiased var] per layer: `running = (1 - momentum) * running + momentum * batch`
    and one more batch tracked, in three launches for all layers."""
    running = [buf for bn in bns for buf in (bn.running_mean, bn.running_var)]
    momentum = bns[0].momentum
    with torch.no_grad():
        torch._foreach_mul_(running, 1.0 - momentum)
        torch._foreach_add_(
            running, [s.to(r.dtype) for s, r in zip(stats, running, strict=True)], alpha=momentum
        )
        torch._foreach_add_([bn.num_batches_tracked for bn in bns], 1)
