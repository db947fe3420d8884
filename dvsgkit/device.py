"""The torch device a command runs on: `--device` checked against this machine (and against the
training options it cannot run), and the CPU threads torch may use on it."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dvsgkit.errors import InputError

if TYPE_CHECKING:
    from dvsgkit.config import TrainConfig

THREADS_ENV = "OMP_NUM_THREADS"  # set: torch's intra-op threads, as torch itself reads it
CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # "QUOTA PERIOD" or "max PERIOD"
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")  # cpu.cfs_quota_us (-1: none), cpu.cfs_period_us


def default_device() -> str:
    """cuda:0 when a GPU is visible, else cpu."""
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def parse_device(text: str) -> torch.device:
    """`--device` as a torch.device; ValueError naming the fix when it cannot run here."""
    try:
        device = torch.device(text)
    except RuntimeError as exc:  # torch's message for a malformed device string
        raise InputError(f"--device {text}: {exc}; use e.g. cpu, cuda or cuda:0") from exc
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {text}: dvsgkit runs on cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {text}: no CUDA device here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                "use cuda:0 .. cuda:N-1"
            )
    return device


def training_device(config: TrainConfig) -> torch.device:
    """`config.device`, after refusing the options it cannot run here, naming the fix."""
    device = parse_device(config.device)
    if config.amp and device.type != "cuda":
        raise InputError(
            f"--amp needs a CUDA device (float16 autocast + GradScaler), got --device "
            f"{config.device}; drop --amp on CPU"
        )
    if config.sync_bn and device.type != "cuda":
        raise InputError(
            f"--sync-bn needs CUDA devices (torch's SyncBatchNorm runs on GPUs only), got "
            f"--device {config.device}; drop --sync-bn"
        )
    if config.compile_steps and device.type == "cuda":
        from dvsgkit.model.graphs import compile_unavailable_reason

        reason = compile_unavailable_reason(device)
        if reason is not None:
            raise InputError(f"--compile cannot run: {reason}; or train without --compile")
    if config.cupy:
        from dvsgkit.model.lif_cupy import cupy_unavailable_reason

        reason = cupy_unavailable_reason()
        if reason is not None:
            raise InputError(f"--cupy cannot run: {reason}; or train without --cupy")
        if device.type != "cuda":
            raise InputError(f"--cupy runs CUDA kernels, got --device {config.device}")
    return device


def cpus_available() -> int:
    """The CPUs this process may run on: its affinity mask (`taskset`, a cpuset), capped by a
    cgroup CPU quota (`docker --cpus 2`, a Kubernetes CPU limit), which the mask does not show."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks on this platform
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def _cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time per period that this process's cgroup may use (v2 `cpu.max`, v1
    `cpu.cfs_quota_us` / `cpu.cfs_period_us`), or None when unlimited or unknown."""
    try:
        quota, period = CGROUP_V2_CPU_MAX.read_text().split()
        return int(quota) / int(period) if quota != "max" and int(period) > 0 else None
    except (OSError, ValueError):  # no cgroup v2 CPU controller here: try v1
        pass
    try:
        quota = int((CGROUP_V1_CPU / "cpu.cfs_quota_us").read_text())
        period = int((CGROUP_V1_CPU / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def set_cpu_threads(spare: int = 0) -> int:
    """Give torch one intra-op thread per CPU this process may use (`cpus_available`), less
    `spare` CPUs left to other work (at least one thread), never more: torch's own default
    counts the machine's cores, which oversubscribes a container or a cpuset (threads waiting
    for descheduled threads cost far more than the parallelism gives). OMP_NUM_THREADS, when
    set, decides instead (torch has read it). Returns the thread count."""
    if os.environ.get(THREADS_ENV, "").strip():
        return torch.get_num_threads()
    threads = min(torch.get_num_threads(), max(1, cpus_available() - spare))
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads
