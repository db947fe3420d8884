"""A training process's place in a torchrun job, and the few collectives the loop needs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dvsgkit.errors import Stopped
from dvsgkit.run.rng import rng_state


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the torchrun job named by the environment; NCCL on CUDA (one GPU per process), gloo on
    CPU. Without torchrun's variables this is a single process and nothing is initialised.
    The training GPU becomes the current device either way: the checkpoint's CUDA RNG state
    (rng_state) is the current device's, and the dropout masks come from the training GPU's."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        return Dist(), device
    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def close_distributed(d: Dist) -> None:
    if d.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def together(d: Dist) -> Iterator[None]:
    """Every rank runs the block and leaves it together: when it raised on any rank (the run
    directory's checks and writes, which rank 0 alone makes, say), the others raise Stopped
    instead of failing in their next collective with a traceback (gloo) or waiting there until
    its timeout (NCCL). torchrun would stop them; other launchers (srun, mpirun) do not. The
    block must make no collective itself.

    When a peer has died already (killed for its memory, say), gloo's vote fails at once (its
    connection closed): after a failure here that error is dropped, so that this rank's own is
    the one reported; otherwise it becomes Stopped. (NCCL's watchdog ends the process at the
    collective's timeout instead.)"""
    if d.world_size == 1:
        yield
        return
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            _any_failed(failed=True)
        raise
    try:
        failed = _any_failed(failed=False)
    except Exception as exc:  # gloo: a peer's connection closed
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        message = f"another process of this job has gone ({why}); this one stops too"
        raise Stopped(message) from exc
    if failed:
        raise Stopped(
            "another process of this job failed (its error, on rank 0 for the run directory and "
            "the frame store, says why); this one stops too"
        )


def _any_failed(failed: bool) -> bool:
    # NCCL reduces tensors on this process's GPU (init_distributed made it current), gloo on CPU.
    nccl = dist.get_backend() == "nccl"
    flag = torch.tensor([int(failed)], device=torch.cuda.current_device() if nccl else "cpu")
    dist.all_reduce(flag)
    return bool(flag.item())


def all_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world_size > 1:
        dist.all_reduce(values)
    return values


def sync_buffers(net: nn.Module, d: Dist) -> None:
    """Give every rank rank 0's BatchNorm running statistics before testing: each rank's last
    training step updated them from its own batch, and rank 0's are what the checkpoint keeps."""
    if d.world_size > 1:
        for buffer in net.buffers():
            dist.broadcast(buffer, 0)


def gather_rng(d: Dist) -> list[dict[str, Any]]:
    """Each rank's RNG state, indexed by rank (what the next epoch's dropout masks start from)."""
    state = rng_state()
    if d.world_size == 1:
        return [state]
    states: list[Any] = [None] * d.world_size
    dist.all_gather_object(states, state)
    return states
