"""The torch device a command runs on: `--device` checked against this machine."""

from __future__ import annotations

import torch


def default_device() -> str:
    """cuda:0 when a GPU is visible, else cpu."""
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def parse_device(text: str) -> torch.device:
    """`--device` as a torch.device; ValueError naming the fix when it cannot run here."""
    try:
        device = torch.device(text)
    except RuntimeError as exc:  # torch's message for a malformed device string
        raise ValueError(f"--device {text}: {exc}; use e.g. cpu, cuda or cuda:0") from exc
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {text}: dvsgkit runs on cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: no CUDA device here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                "use cuda:0 .. cuda:N-1"
            )
    return device
