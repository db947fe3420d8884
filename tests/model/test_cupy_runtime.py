"""CuPy plumbing shared by the fused kernels: import failures, device checks, stream reuse, and
autograd Functions that refuse double backward."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dvsgkit.model import cupy_runtime, lif_cupy, plif_cupy
from dvsgkit.model.lif import TAU, V_THRESHOLD


def _fake_cupy_package(folder: Path, body: str) -> None:
    package = folder / "cupy"
    package.mkdir()
    (package / "__init__.py").write_text(body)


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("raise OSError('libnvrtc.so.13: cannot open shared object file')", "OSError"),
        ("raise RuntimeError('CUDA path could not be detected')", "RuntimeError"),
        ("import cupy_backends_missing_part", "ModuleNotFoundError"),
    ],
)
def test_a_cupy_that_fails_to_import_is_a_reason_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, kind: str
) -> None:
    _fake_cupy_package(tmp_path, body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    module, error = cupy_runtime._import_cupy()
    assert module is None and error is not None and error.startswith(kind)
    monkeypatch.setattr(cupy_runtime, "cp", None)
    monkeypatch.setattr(cupy_runtime, "CUPY_IMPORT_ERROR", error)
    reason = cupy_runtime.cupy_unavailable_reason()
    assert f"does not import ({kind}" in reason and "cupy-cuda12x" in reason


def test_a_missing_cupy_is_reported_as_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", [str(tmp_path)])  # no cupy anywhere
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    assert cupy_runtime._import_cupy() == (None, None)


@pytest.mark.parametrize("exc", [OSError("libcudart.so.13: cannot open"), RuntimeError("no CUDA")])
def test_a_cupy_that_cannot_load_its_runtime_names_the_fix(
    monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    def device_count() -> int:
        raise exc

    runtime = SimpleNamespace(getDeviceCount=device_count)
    fake = SimpleNamespace(__version__="14.2.0", cuda=SimpleNamespace(runtime=runtime))
    monkeypatch.setattr(cupy_runtime, "cp", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    reason = cupy_runtime.cupy_unavailable_reason()
    assert reason is not None and f"CuPy 14.2.0 cannot use the GPU ({type(exc).__name__}" in reason
    assert "cupy-cuda12x" in reason


def test_a_cupy_that_cannot_load_nvrtc_is_a_reason_before_any_kernel_builds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The GPU is usable but libnvrtc (loaded on first use) is not found: say so at the option
    # check, not as a traceback from the first forward pass.
    def no_nvrtc() -> tuple[int, int]:
        raise RuntimeError("libnvrtc.so.13 not found")

    cuda = SimpleNamespace(
        runtime=SimpleNamespace(getDeviceCount=lambda: 1),
        nvrtc=SimpleNamespace(getVersion=no_nvrtc),
    )
    monkeypatch.setattr(cupy_runtime, "cp", SimpleNamespace(__version__="14.2.0", cuda=cuda))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    reason = cupy_runtime.cupy_unavailable_reason()
    assert reason is not None and "cannot load NVRTC" in reason, reason
    assert "libnvrtc.so.13 not found" in reason and "cupy-cuda12x" in reason
    cuda.nvrtc.getVersion = lambda: (13, 0)
    assert cupy_runtime.cupy_unavailable_reason() is None


class _Device:
    def __init__(self, index: int) -> None:
        self.index = index

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *args: object) -> None:
        return None


def test_external_streams_are_built_once_per_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[tuple[int, int]] = []

    def external(handle: int, device: int) -> tuple[int, int]:
        built.append((handle, device))
        return (handle, device)

    fake = SimpleNamespace(cuda=SimpleNamespace(Device=_Device, ExternalStream=external))
    monkeypatch.setattr(cupy_runtime, "cp", fake)
    cupy_runtime.external_stream.cache_clear()
    try:
        for _ in range(3):
            assert cupy_runtime.external_stream(0, 1234) == (1234, 0)
        cupy_runtime.external_stream(1, 1234)
        cupy_runtime.external_stream(0, 5678)
    finally:
        cupy_runtime.external_stream.cache_clear()
    assert built == [(1234, 0), (1234, 1), (5678, 0)]


def _fake_lif_launch(kind: str, tensors: list, ref: torch.Tensor, params: tuple, *rest) -> None:
    """The LIF kernels' effect on CPU tensors, written into the outputs as the kernels do."""
    if kind == "forward":
        x, *outputs = (t for t in tensors if t is None or t.shape == ref.shape)
        spike, h = outputs[-2], outputs[-1]
        v = torch.zeros_like(x[0])
        for t in range(x.shape[0]):
            h[t] = v + (x[t] - v) / TAU
            spike[t] = (h[t] >= V_THRESHOLD).to(x.dtype)
            v = h[t] * (1 - spike[t])
    else:
        grad_spike, grad_x = tensors[0], [t for t in tensors if t is not None][-1]
        if grad_x.shape != ref.shape:  # PLIF: the partial sums come last
            grad_x = tensors[3]
            tensors[-1].zero_()
        grad_x.copy_(grad_spike / TAU)


@pytest.mark.parametrize("neuron", ["lif", "plif"])
def test_the_kernel_functions_refuse_double_backward(
    monkeypatch: pytest.MonkeyPatch, neuron: str
) -> None:
    # The kernels' gradient is not itself differentiable: a second differentiation must fail
    # loudly instead of silently returning zero.
    module = lif_cupy if neuron == "lif" else plif_cupy
    monkeypatch.setattr(module, "_launch", _fake_lif_launch)
    x = torch.rand(3, 2, 4, requires_grad=True)
    if neuron == "lif":
        spikes = lif_cupy.LIFMultiStep.apply(x, (TAU, V_THRESHOLD, 0.0, 2.0))
    else:
        monkeypatch.setattr(plif_cupy, "_sm_count", lambda device: 1)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        decay = torch.tensor(0.5, requires_grad=True)
        spikes = plif_cupy.PLIFMultiStep.apply(x, decay, (V_THRESHOLD, 2.0))
    upstream = torch.rand_like(spikes, requires_grad=True)  # a gradient with its own graph
    (grad_x,) = torch.autograd.grad(spikes, x, upstream, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_x.sum().backward()


@pytest.mark.gpu
def test_one_external_stream_serves_every_launch_on_a_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cp = cupy_runtime.cp
    if cp is None:
        pytest.skip(cupy_runtime.cupy_unavailable_reason())
    built = []
    real = cp.cuda.ExternalStream

    def counting(*args: object, **kwargs: object):
        built.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(cp.cuda, "ExternalStream", counting)
    cupy_runtime.external_stream.cache_clear()
    x = torch.rand(4, 3, 64, device="cuda", requires_grad=True)
    for _ in range(3):
        lif_cupy.lif_multistep_cupy(x * 2).sum().backward()
    torch.cuda.synchronize()
    cupy_runtime.external_stream.cache_clear()
    assert len(built) == 1
