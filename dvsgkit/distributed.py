"""A training process's place in a torchrun job: the stages every process ends together, and the
few collectives the loop needs. Without torchrun's variables it is a job of one process."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from dvsgkit.errors import Stopped

R = TypeVar("R")


class Job(contextlib.ExitStack):
    """Joins the torchrun job the environment names (NCCL on CUDA, one GPU per process; gloo on
    the CPU) and makes the training GPU the current device either way: a checkpoint's CUDA RNG
    state is the current device's. Closing it (an ExitStack) closes what was entered in it,
    then leaves the process group."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0")) if self.world_size > 1 else 0
        self.main = self.rank == 0  # the one process that prints and writes
        if self.world_size > 1 and device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        self.device = device
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.callback(self._leave)

    def _leave(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def stage(self, fn: Callable[..., R], *args: Any, main_only: bool = False, **kwargs: Any) -> R:
        """`fn(*args, **kwargs)` (on the main process alone with `main_only`: None elsewhere),
        left by every process together: when it raised on any, the others raise Stopped instead
        of failing in their next collective with a traceback (gloo) or waiting there until its
        timeout (NCCL). torchrun would stop them; other launchers (srun, mpirun) do not. `fn`
        makes no collective itself. When a peer has died already, gloo's vote fails at once:
        after an error here that failure is dropped so that this process's own is reported,
        otherwise it becomes Stopped. (NCCL's watchdog ends the process at the timeout.)"""
        run = self.main or not main_only
        if self.world_size == 1:
            return fn(*args, **kwargs)
        try:
            result = fn(*args, **kwargs) if run else None
        except BaseException:
            with contextlib.suppress(Exception):
                self._any_failed(True)
            raise
        try:
            failed = self._any_failed(False)
        except Exception as exc:  # gloo: a peer's connection closed
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise Stopped(
                f"another process of this job has gone ({why}); this one stops too"
            ) from exc
        if failed:
            raise Stopped(
                "another process of this job failed (its error, on rank 0 for the run directory "
                "and the frame store, says why); this one stops too"
            )
        return result

    def _any_failed(self, failed: bool) -> bool:
        # NCCL reduces tensors on this process's GPU (made current above), gloo on the CPU.
        on = torch.cuda.current_device() if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([int(failed)], device=on)
        dist.all_reduce(flag)
        return bool(flag.item())

    def wrap(self, net: nn.Module) -> nn.Module:
        """What trains: `net`, in DistributedDataParallel when the job has several processes."""
        if self.world_size == 1:
            return net
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(net, device_ids=ids)

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(values)
        return values

    def sync_buffers(self, net: nn.Module) -> None:
        """Give every process rank 0's BatchNorm statistics before testing: each one's last step
        updated them from its own batch, and rank 0's are what the checkpoint keeps."""
        if self.world_size > 1:
            for buffer in net.buffers():
                dist.broadcast(buffer, 0)

    def gather(self, value: Any) -> list[Any]:
        """Each process's `value` (picklable), indexed by rank."""
        if self.world_size == 1:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values
