"""CuPy for the fused kernels: whether it can run here, compiling kernel source on a device, and
build failures as one readable line (versions and the fix) instead of a raw NVRTC dump.

CuPy is optional: `cupy_unavailable_reason()` says what is missing; nothing here needs a GPU to
import.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import torch

from dvsgkit.errors import DvsgkitError


def _import_cupy() -> tuple[ModuleType | None, str | None]:
    """(cupy, None), or (None, why it did not import). CuPy is optional: only backend="cupy"
    needs it. Besides ImportError (not installed), a wheel that cannot load its CUDA libraries
    fails at import with OSError or RuntimeError (CuPy 14 finds them when imported); that is
    kept as the reason rather than raised from `import dvsgkit.model`."""
    try:
        return importlib.import_module("cupy"), None
    except ImportError as exc:
        if exc.name == "cupy":
            return None, None  # simply not installed
        return None, f"{type(exc).__name__}: {exc}"
    except (OSError, RuntimeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


cp, CUPY_IMPORT_ERROR = _import_cupy()

INSTALL_HINT = (
    "install the CuPy wheel matching your CUDA major version (the 'CUDA Version' that "
    "`nvidia-smi` prints): pip install cupy-cuda12x (also: pip install 'dvsgkit[cuda]') "
    "or cupy-cuda13x / cupy-cuda11x"
)
FALLBACK_HINT = "or build the network with backend='torch'"


class CupyUnavailableError(DvsgkitError, RuntimeError):
    """The CuPy backend was asked for where it cannot run; the message says what to install."""


class CupyKernelError(DvsgkitError, RuntimeError):
    """The fused kernels could not be compiled or loaded (usually a CuPy/CUDA version mismatch)."""


def cupy_unavailable_reason() -> str | None:
    """None when the CuPy kernels can run here; else a one-line reason naming the fix."""
    if cp is None:
        if CUPY_IMPORT_ERROR is not None:
            return (
                f"CuPy is installed but does not import ({CUPY_IMPORT_ERROR}); its CUDA "
                f"libraries are missing or do not fit this machine: {INSTALL_HINT}, {FALLBACK_HINT}"
            )
        return f"CuPy is not installed; {INSTALL_HINT}, {FALLBACK_HINT}"
    if not torch.cuda.is_available():
        return (
            "no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is False); the CuPy "
            f"kernels need an NVIDIA GPU and a CUDA build of PyTorch; {FALLBACK_HINT}"
        )
    try:
        cp.cuda.runtime.getDeviceCount()
    except (RuntimeError, OSError) as exc:  # CUDARuntimeError, or a CUDA library not loading
        return (
            f"CuPy {cp.__version__} cannot use the GPU ({type(exc).__name__}: {exc}); its CUDA "
            f"runtime does not fit the driver: {INSTALL_HINT}, {FALLBACK_HINT}"
        )
    try:  # the kernels are compiled at first use by NVRTC, a library CuPy loads on demand
        cp.cuda.nvrtc.getVersion()
    except (RuntimeError, OSError) as exc:  # NVRTCError, or libnvrtc not found
        return (
            f"CuPy {cp.__version__} cannot load NVRTC, the CUDA compiler library it builds "
            f"kernels with ({type(exc).__name__}: {exc}): {INSTALL_HINT}, {FALLBACK_HINT}"
        )
    return None


def require_cupy() -> None:
    """Raise `CupyUnavailableError` with the reason and the fix unless the kernels can run."""
    reason = cupy_unavailable_reason()
    if reason is not None:
        raise CupyUnavailableError(f"backend 'cupy' cannot run: {reason}")


def _cuda_versions() -> str:
    """CuPy's, NVRTC's, the runtime's and the driver's versions, for error messages."""
    if cp is None:
        return "CuPy is not importable"
    try:
        nvrtc = ".".join(map(str, cp.cuda.nvrtc.getVersion()))
        driver = cp.cuda.runtime.driverGetVersion()
        runtime = cp.cuda.runtime.runtimeGetVersion()
    except (RuntimeError, OSError) as exc:  # NVRTCError, CUDARuntimeError, a missing library
        return f"CuPy {cp.__version__}; other versions unavailable ({exc})"
    return (
        f"CuPy {cp.__version__}, NVRTC {nvrtc}, CUDA runtime {runtime // 1000}."
        f"{runtime % 1000 // 10}, driver supports CUDA {driver // 1000}.{driver % 1000 // 10}"
    )


def readable_kernel_error(exc: Exception, dtype_name: str, neuron: str = "LIF") -> CupyKernelError:
    """Replace a raw NVRTC/driver dump by its first line, the versions involved and the fix."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return CupyKernelError(
        f"could not build dvsgkit's {dtype_name} {neuron} kernel ({type(exc).__name__}: {first}); "
        f"{_cuda_versions()}. This usually means CuPy does not match the installed CUDA: "
        f"{INSTALL_HINT}, {FALLBACK_HINT}"
    )


def build_kernels(
    source: str, names: list[str], dtype_name: str, device: int, neuron: str = "LIF"
) -> dict:
    """Compile `source` on `device` and return its kernels by name; a compile or load failure
    becomes one readable CupyKernelError."""
    with cp.cuda.Device(device):
        try:
            module = cp.RawModule(code=source, name_expressions=None)
            return {name: module.get_function(name) for name in names}
        except (
            cp.cuda.compiler.CompileException,  # NVRTC rejected the source
            cp.cuda.driver.CUDADriverError,  # e.g. PTX newer than the driver
            cp.cuda.nvrtc.NVRTCError,
            OSError,  # libnvrtc missing
            RuntimeError,  # e.g. a CUDA library that cannot be found when first needed
        ) as exc:
            raise readable_kernel_error(exc, dtype_name, neuron) from exc


@functools.cache
def external_stream(device: int, handle: int):
    """CuPy's view of the CUDA stream `handle` (torch's current stream) on `device`, built once
    per stream: kernels launch inside `with cp.cuda.Device(device), external_stream(...)`.
    Building one per launch costs time and makes CuPy 14 warn on every launch."""
    with cp.cuda.Device(device):
        return cp.cuda.ExternalStream(handle, device)
