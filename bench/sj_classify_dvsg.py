"""SpikingJelly 0.0.0.0.14's example (classify_dvsg: PythonNet, and CextNet when CuPy
imports) without what only its training script uses.

The module imports the DVS128Gesture dataset class (torchvision, scipy) and SummaryWriter
(tensorboard) at import time; neither is needed to build its networks. Whichever is missing is
replaced by a stand-in. cuDNN's flags are put back as they were: the module sets classify_dvsg's
(deterministic, no autotuning) at import.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

import torch


def stub_missing_imports() -> None:
    """Stand-ins for what SpikingJelly 0.0.0.0.14 imports at import time but never uses here:
    SummaryWriter (its CuPy kernel module imports it, and `clock_driven.neuron` silently drops its
    CuPy backend when that import fails) and the DVS128Gesture dataset class (torchvision, scipy).
    Anything that fails to import, or imports but breaks against this torch, is replaced."""
    try:
        importlib.import_module("torch.utils.tensorboard")
    except Exception:  # missing, or built for another torch
        sys.modules["torch.utils.tensorboard"] = types.SimpleNamespace(SummaryWriter=None)
    try:
        importlib.import_module("spikingjelly.datasets.dvs128_gesture")
    except Exception:  # torchvision or scipy missing or broken: the class is not used here
        stub = types.ModuleType("spikingjelly.datasets.dvs128_gesture")
        stub.DVS128Gesture = None
        sys.modules["spikingjelly.datasets.dvs128_gesture"] = stub


def classify_dvsg_module() -> Any:
    stub_missing_imports()
    flags = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    from spikingjelly.clock_driven.examples import classify_dvsg

    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags
    return classify_dvsg
