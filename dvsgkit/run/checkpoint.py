"""dvsgkit checkpoints: written whole or not at all, loaded without running code, and checked
with an error that names the file before anything is taken from them."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dvsgkit import __version__
from dvsgkit.config import TrainConfig
from dvsgkit.io.atomic import atomic_path
from dvsgkit.run import BEST, checkpoint_file

CHECKPOINT_FORMAT = "dvsgkit.checkpoint"
CHECKPOINT_VERSION = 1


# ----------------------------------------------------------------------------- files


def new_checkpoint(parts: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """A dvsgkit checkpoint: the state dict of each of `parts` (net, optimizer, lr_scheduler,
    scaler), then `fields` (epoch, max_test_acc, rng, config, world_size, frames), then the
    format fields `is_dvsgkit_checkpoint` looks for. Tensors and plain types only."""
    checkpoint = {key: part.state_dict() for key, part in parts.items()}
    version = {"format_version": CHECKPOINT_VERSION, "dvsgkit_version": __version__}
    return checkpoint | fields | {"format": CHECKPOINT_FORMAT, **version}


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """torch.save to a temp name in the same folder, fsync, then rename: a crash mid-write leaves
    the previous checkpoint intact, never a truncated one under the real name."""
    # Serialised in memory first: on a full disk torch's zip writer fails with an opaque
    # RuntimeError, a plain write with an OSError that names the cause.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getbuffer())
        f.flush()
        os.fsync(f.fileno())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load any checkpoint with `weights_only=True` (a pickle could otherwise run code)."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; pass a .pth file or a run directory")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a truncated or foreign file
        raise ValueError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc}); it may be "
            "truncated or not a weights-only torch file: resume from another checkpoint"
        ) from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("net"), dict):
        raise ValueError(f"{path} holds no 'net' state dict; is it a training checkpoint?")
    return ckpt


def is_dvsgkit_checkpoint(ckpt: dict[str, Any]) -> bool:
    return ckpt.get("format") == CHECKPOINT_FORMAT


# ----------------------------------------------------------------------------- checks


def _bad(path: Path, what: str) -> ValueError:
    return ValueError(
        f"{path} is not a valid dvsgkit checkpoint: {what}; use another checkpoint of the run "
        f"({BEST}, a backup)"
    )


def _kind(value: Any) -> str:
    return type(value).__name__


def check_checkpoint(ckpt: Mapping[str, Any], path: Path, *, resume: bool) -> TrainConfig:
    """The recipe of a dvsgkit checkpoint, after checking that it holds what evaluating (or, with
    `resume`, continuing) needs in the types dvsgkit writes. ValueError names the file and the
    first problem: a damaged or edited file fails here, not with a traceback halfway through."""
    needed = {"net": dict, "epoch": int, "max_test_acc": (int, float), "config": dict}
    if resume:
        needed |= {"optimizer": dict, "lr_scheduler": dict, "scaler": dict}
    for key, kind in needed.items():
        if key not in ckpt:
            raise _bad(path, f"missing key {key!r}")
        value = ckpt[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _bad(path, f"{key!r} is a {_kind(value)}")
    if ckpt["epoch"] < 0:
        raise _bad(path, f"'epoch' is {ckpt['epoch']}, expected >= 0")
    if not 0 <= ckpt["max_test_acc"] <= 1:  # also refuses NaN
        raise _bad(path, f"'max_test_acc' is {ckpt['max_test_acc']}, expected 0..1")
    for key, value in ckpt["net"].items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise _bad(path, f"'net' maps {key!r} to a {_kind(value)}, expected a tensor")
    rng = ckpt.get("rng", [])
    if not isinstance(rng, list) or not all(isinstance(s, dict) for s in rng):
        raise _bad(path, f"'rng' is a {_kind(rng)}, expected a list of RNG states")
    try:
        return TrainConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as exc:
        raise _bad(path, f"its 'config' is invalid ({exc})") from exc


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def load_weights(net: nn.Module, state: Mapping[str, Any], path: Path) -> None:
    """`net.load_state_dict(state)`, after checking names and shapes: ValueError with one line
    naming the file and the first tensor that does not fit (torch's message spans many)."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [
            f"{label} {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise ValueError(f"{path}: weights do not fit this network: {'; '.join(parts)}")
    for key, want in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor):
            raise ValueError(f"{path}: weights do not fit: {key} is a {_kind(got)}")
        if got.shape != want.shape:
            raise ValueError(
                f"{path}: weights do not fit: {key} has shape {_shape(got)}, expected "
                f"{_shape(want)}"
            )
    net.load_state_dict(state)


# An optimizer's group options that say how it runs on this machine, not what it computes:
# torch's load_state_dict would take them from the checkpoint (a GPU run's fused=True on a CPU).
EXECUTION_OPTIONS = ("fused", "foreach", "capturable")


def load_state(part: Any, state: Any, key: str, path: Path) -> None:
    """`part.load_state_dict(state)` for an optimizer, scheduler, scaler or RNG state; an edited
    or foreign state becomes a ValueError naming the file and the part, not torch's traceback.
    An optimizer keeps its own execution options (`EXECUTION_OPTIONS`) and gets its moments in
    its parameters' memory layout (see `_fit_optimizer_state`)."""
    execution = []
    if isinstance(part, torch.optim.Optimizer):
        execution = [{k: g[k] for k in EXECUTION_OPTIONS if k in g} for g in part.param_groups]
    try:
        part.load_state_dict(state)
    # What torch's load_state_dict raises on an edited state depends on where it first trips.
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else _kind(exc)
        raise ValueError(
            f"{path}: its {key!r} state does not fit this run ({_kind(exc)}: {first}); use "
            "another checkpoint of the run"
        ) from exc
    if isinstance(part, torch.optim.Optimizer):
        _fit_optimizer_state(part, execution, f"{path}: its {key!r} state does not fit this run")


def _fit_optimizer_state(optimizer: torch.optim.Optimizer, execution: list[dict], bad: str) -> None:
    """After load_state_dict: check each per-element state tensor's shape (torch loads any;
    step() would fail: ValueError starting with `bad`), give it its parameter's strides (torch
    moves it keeping the saved ones: a channels_last run's moments would pair with a contiguous
    parameter element by memory, not by index), put `step` where the optimizer's kernels read it
    (fused: float32 beside the parameter) and put back this optimizer's execution options."""
    for group, options in zip(optimizer.param_groups, execution, strict=True):
        group.update(options)
        fused = bool(group.get("fused")) or bool(group.get("capturable"))
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for name, value in state.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if value.dim() > 0 and value.shape != param.shape:
                    raise ValueError(
                        f"{bad}: {name} has shape {_shape(value)} for a parameter of shape "
                        f"{_shape(param)}"
                    )
                if value.dim() > 0 and value.stride() != param.stride():
                    state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)
                elif name == "step" and value.dim() == 0:
                    target = param.device if fused else torch.device("cpu")
                    state[name] = value.to(target, torch.float32)
