"""The training step never waits for the host: no tensor read back per step (CPU: any read of a
tensor's value fails the test; CUDA: torch's sync debug mode turns each synchronisation into an
error, and steps queued behind a long GPU sleep must return first, which no synchronisation of
CuPy's or the driver's would), in every network the trainer builds."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
import torch

from dvsgkit.config import TrainConfig
from dvsgkit.model import GestureNet
from dvsgkit.objective import FiniteWatch, run_epoch
from dvsgkit.train import build_optim

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")


class _Bar:
    def update(self, n: int) -> None:
        pass


def _batches(device: str, n: int = 4, t: int = 3, count: int = 3) -> list[tuple[Any, Any]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        frames = (torch.rand(n, t, 2, 128, 128, generator=g) < 0.2).float()
        labels = torch.randint(0, 11, (n,), generator=g)
        out.append((frames.to(device), labels.to(device)))
    return out


@contextmanager
def _no_value_reads(monkeypatch: pytest.MonkeyPatch):
    """Every Python-level read of a tensor's value raises inside the block."""
    reads: list[str] = []

    def refuse(name: str):
        def read(self: torch.Tensor, *args: object, **kwargs: object) -> Any:
            reads.append(name)
            raise AssertionError(f"Tensor.{name}() read a value back during a training step")

        return read

    with monkeypatch.context() as m:
        for name in READS:
            m.setattr(torch.Tensor, name, refuse(name))
        yield reads


@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_an_epoch_reads_no_tensor_value_back_on_cpu(
    monkeypatch: pytest.MonkeyPatch, train: bool
) -> None:
    config = TrainConfig(channels=4, opt="sgd")  # CPU Adam reads its step count back
    net = GestureNet(4, "step").train(train)
    optimizer, _ = build_optim(config, net.parameters(), torch.device("cpu"))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    batches = _batches("cpu")
    watch = FiniteWatch(net, torch.device("cpu"))  # the divergence check runs on each step
    with _no_value_reads(monkeypatch) as reads:
        step = optimizer if train else None
        sums = run_epoch(net, batches, torch.device("cpu"), False, _Bar(), step, scaler, watch)
    assert reads == []
    assert sums.tolist()[2] == 12  # [loss sum, correct, samples] stayed a tensor until here
    assert watch.steps.tolist() == (3 if train else 0) and watch.problem(0) is None


def test_the_guard_catches_a_read(monkeypatch: pytest.MonkeyPatch) -> None:
    loss = torch.tensor(1.0)
    with _no_value_reads(monkeypatch), pytest.raises(AssertionError, match=r"Tensor.item\(\)"):
        loss.item()


CUDA_NETS = {
    "step": TrainConfig(device="cuda", amp=True, channels=8),
    "cupy": TrainConfig(device="cuda", amp=True, channels=8, cupy=True),
    "cupy-fused": TrainConfig(device="cuda", amp=True, channels=8, cupy=True, fused=True),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CUDA_NETS))
def test_a_cuda_training_step_never_synchronises(name: str) -> None:
    config = CUDA_NETS[name]
    if config.cupy:
        from dvsgkit.model.cupy_runtime import cupy_unavailable_reason

        if cupy_unavailable_reason() is not None:
            pytest.skip(cupy_unavailable_reason())
    device = torch.device("cuda")
    net = GestureNet(8, config.mode, config.backend, fused=config.fused).to(device)
    net.to(memory_format=torch.channels_last)
    optimizer, _ = build_optim(replace(config), net.parameters(), device)
    scaler = torch.amp.GradScaler("cuda", enabled=True)
    batches = _batches("cuda")
    watch = FiniteWatch(net, device)
    # One warm-up step: kernel compilation, cuDNN autotuning and the scaler's lazy state may
    # synchronise once; the steady-state steps after it must not.
    run_epoch(net, batches[:1], device, True, _Bar(), optimizer, scaler, watch)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sums = run_epoch(net, batches[1:], device, True, _Bar(), optimizer, scaler, watch)
        net.eval()
        with torch.inference_mode():
            run_epoch(net, batches[1:], device, True, _Bar())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert sums.tolist()[2] == 8 and watch.problem(0) is None
    if config.cupy:  # CuPy's synchronisations are invisible to torch's debug mode
        sleep = 2.0  # seconds of GPU time queued before the steps
        torch.cuda._sleep(_cycles_in(sleep))
        start = time.perf_counter()
        run_epoch(net.train(), batches[1:], device, True, _Bar(), optimizer, scaler, watch)
        queued = time.perf_counter() - start
        torch.cuda.synchronize()
        assert queued < sleep / 2, f"the host waited {queued:.2f} s for the GPU: a synchronisation"


def _cycles_in(seconds: float) -> int:
    """GPU clock cycles in `seconds`, measured with a short `torch.cuda._sleep`."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(10_000_000)
    end.record()
    end.synchronize()
    return int(10_000_000 * seconds * 1000 / start.elapsed_time(end))
