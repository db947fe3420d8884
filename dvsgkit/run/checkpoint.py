"""dvsgkit checkpoints: what they hold (the states of the net, optimizer, scheduler, scaler and
every RNG, the config, the frames), written whole or not at all, loaded without running code,
and checked with one line naming the file before anything is taken from them."""

from __future__ import annotations

import io
import pickle
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dvsgkit import __version__
from dvsgkit.config import DEFAULTS, TrainConfig
from dvsgkit.errors import InputError, NotFound
from dvsgkit.fs import write_bytes
from dvsgkit.run import BEST, checkpoint_file

CHECKPOINT_FORMAT = "dvsgkit.checkpoint"
CHECKPOINT_VERSION = 1
# An optimizer's group options that say how it runs on this machine, not what it computes:
# torch's load_state_dict would take them from the checkpoint (a GPU run's fused=True on a CPU).
EXECUTION_OPTIONS = ("fused", "foreach", "capturable")


# ----------------------------------------------------------------------------- files


def new_checkpoint(parts: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """The state dict of each of `parts` (net, optimizer, lr_scheduler, scaler), then `fields`
    (epoch, max_test_acc, rng, config, world_size, frames), then the format fields. Tensors and
    plain types only."""
    checkpoint = {key: part.state_dict() for key, part in parts.items()}
    version = {"format_version": CHECKPOINT_VERSION, "dvsgkit_version": __version__}
    return checkpoint | fields | {"format": CHECKPOINT_FORMAT, **version}


def checkpoint_bytes(ckpt: dict[str, Any]) -> bytes:
    """`ckpt` as torch.save writes it, serialised in memory: on a full disk torch's zip writer
    fails with an opaque RuntimeError, a plain write with an OSError naming the cause."""
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    return buffer.getvalue()


def save_checkpoint(ckpt: dict[str, Any], path: Path) -> None:
    """Write `ckpt` whole under a temporary name, then rename: a crash leaves the previous file."""
    write_bytes(path, checkpoint_bytes(ckpt), sync=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Any checkpoint (a .pth file, or a run directory's latest), loaded with `weights_only=True`
    (a pickle could otherwise run code), refused when a weight is not finite (its run had
    diverged): InputError naming the file and the first such tensor."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise NotFound(f"checkpoint {path} not found; pass a .pth file or a run directory")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # what the weights-only unpickler refused
        raise InputError(_unpickling_problem(path, exc)) from exc
    except Exception as exc:  # torch raises many kinds for a truncated or foreign file
        raise InputError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}: {_first_line(exc)}); "
            "it may be truncated or not a torch file: use another checkpoint"
        ) from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("net"), dict):
        raise InputError(f"{path} holds no 'net' state dict; is it a training checkpoint?")
    for key, value in ckpt["net"].items():
        floating = isinstance(value, torch.Tensor) and value.is_floating_point()
        if floating and not bool(torch.isfinite(value).all()):
            raise InputError(
                f"{path}: weight {key} holds non-finite values (NaN or inf): its run had "
                "diverged when it was written; use an earlier checkpoint of the run, or train "
                "again with a lower --lr"
            )
    return ckpt


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unpickling_problem(path: Path, exc: pickle.UnpicklingError) -> str:
    """One line for a file the weights-only unpickler refused, naming what it holds. torch's own
    message suggests loading it unsafely; dvsgkit never does."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if found:
        return (
            f"{path} is not a readable checkpoint: it holds a pickled Python object "
            f"({found.group(1)}), not only tensors and plain values, and dvsgkit never unpickles "
            "objects (that could run code); save the weights as tensors where it was made "
            "(torch.save({'net': model.state_dict()}, path)), or use another checkpoint"
        )
    why = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(exc))
    detail = why.group(1).strip().rstrip(".") if why else "unexpected bytes"
    return (
        f"{path} is not a readable checkpoint ({detail}): not a torch file of tensors; it may "
        "be truncated or another kind of file: use another checkpoint"
    )


def is_dvsgkit_checkpoint(ckpt: Mapping[str, Any]) -> bool:
    return ckpt.get("format") == CHECKPOINT_FORMAT


def load_resumable(path: Path) -> dict[str, Any]:
    """A dvsgkit checkpoint to continue training from, checked (`check_checkpoint`)."""
    ckpt = load_checkpoint(path)
    if not is_dvsgkit_checkpoint(ckpt):
        raise InputError(
            f"{path} is not a dvsgkit training checkpoint (a SpikingJelly one?); resuming needs "
            "the optimizer, scheduler and RNG states only dvsgkit checkpoints hold"
        )
    check_checkpoint(ckpt, checkpoint_file(path), resume=True)
    return ckpt


# ----------------------------------------------------------------------------- checks


def _bad(path: Path, what: str) -> InputError:
    return InputError(
        f"{path} is not a valid dvsgkit checkpoint: {what}; use another checkpoint of the run "
        f"({BEST}, a backup)"
    )


def _kind(value: Any) -> str:
    return type(value).__name__


def check_checkpoint(ckpt: Mapping[str, Any], path: Path, *, resume: bool) -> TrainConfig:
    """The recipe of a dvsgkit checkpoint, after checking that it holds what evaluating (or,
    with `resume`, continuing) needs, in the types dvsgkit writes: a damaged or edited file
    fails here, naming the file and the first problem, not with a traceback halfway through."""
    needed = {"net": dict, "epoch": int, "max_test_acc": (int, float), "config": dict}
    if resume:
        needed |= {"optimizer": dict, "lr_scheduler": dict, "scaler": dict}
    for key, kind in needed.items():
        if key not in ckpt:
            raise _bad(path, f"missing key {key!r}")
        if not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool):
            raise _bad(path, f"{key!r} is a {_kind(ckpt[key])}")
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
        config = TrainConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as exc:
        raise _bad(path, f"its 'config' is invalid ({exc})") from exc
    # Before any network is built from the config: an edited `channels` would otherwise make
    # torch allocate that network (channels 20000: 23 GB) and die with an allocator traceback.
    fit = (
        f" for its config (channels {config.channels}, neuron {config.neuron}"
        f"{f', size {config.size}' if config.size != DEFAULTS.size else ''}): the file was "
        "edited or damaged; use another checkpoint of the run"
    )
    check_weights(config_shapes(config), ckpt["net"], path, fit)
    return config


def config_shapes(config: TrainConfig) -> dict[str, torch.Size]:
    """The state_dict shapes of the GestureNet that `config` describes, from a network built on
    the meta device: no memory is allocated, whatever the channels."""
    from dvsgkit.model import GestureNet

    with torch.device("meta"):  # the layer-by-layer torch net: every mode has the same weights
        net = GestureNet(config.channels, "layer", "torch", neuron=config.neuron, size=config.size)
    return {key: value.shape for key, value in net.state_dict().items()}


def _shape(t: torch.Tensor | torch.Size) -> list[int]:
    return list(t if isinstance(t, torch.Size) else t.shape)


def check_weights(
    expected: Mapping[str, torch.Size], state: Mapping[str, Any], path: Path, fit: str = ""
) -> None:
    """InputError naming the file and the first tensor of `state` that is not there, not
    expected, or not of the `expected` shape; `fit` ends the line (where the shapes come from,
    and the fix)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [
            f"{label} {', '.join(map(str, keys[:3]))}{', ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise InputError(f"{path}: weights do not fit this network: {'; '.join(parts)}{fit}")
    for key, want in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor):
            raise InputError(f"{path}: weights do not fit: {key} is a {_kind(got)}{fit}")
        if got.shape != want:
            raise InputError(
                f"{path}: weights do not fit: {key} has shape {_shape(got)}, expected "
                f"{_shape(want)}{fit}"
            )


def load_weights(net: nn.Module, state: Mapping[str, Any], path: Path) -> None:
    """`net.load_state_dict(state)` after checking names and shapes (torch's message for a
    mismatch spans many lines)."""
    check_weights({key: value.shape for key, value in net.state_dict().items()}, state, path)
    net.load_state_dict(state)


def load_state(part: Any, state: Any, key: str, path: Path) -> None:
    """`part.load_state_dict(state)` for an optimizer, scheduler, scaler or RNG state: an edited
    or foreign state is an InputError naming the file and the part. An optimizer keeps its own
    execution options and gets its moments in its parameters' memory layout."""
    execution = []
    if isinstance(part, torch.optim.Optimizer):
        execution = [{k: g[k] for k in EXECUTION_OPTIONS if k in g} for g in part.param_groups]
    try:
        part.load_state_dict(state)
    # What torch's load_state_dict raises on an edited state depends on where it first trips.
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        raise InputError(
            f"{path}: its {key!r} state does not fit this run ({_kind(exc)}: {_first_line(exc)}); "
            "use another checkpoint of the run"
        ) from exc
    if isinstance(part, torch.optim.Optimizer):
        _fit_optimizer_state(part, execution, f"{path}: its {key!r} state does not fit this run")


def _fit_optimizer_state(optimizer: torch.optim.Optimizer, execution: list[dict], bad: str) -> None:
    """After load_state_dict: check each per-element state tensor's shape (torch loads any;
    step() would fail), give it its parameter's strides (torch keeps the saved ones: a
    channels_last run's moments would pair with a contiguous parameter element by memory, not by
    index), put `step` where the optimizer's kernels read it (fused: float32 beside the
    parameter) and put back this optimizer's execution options."""
    for group, options in zip(optimizer.param_groups, execution, strict=True):
        group.update(options)
        fused = bool(group.get("fused")) or bool(group.get("capturable"))
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for name, value in state.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if value.dim() > 0 and value.shape != param.shape:
                    raise InputError(
                        f"{bad}: {name} has shape {_shape(value)} for a parameter of shape "
                        f"{_shape(param)}"
                    )
                if value.dim() > 0 and value.stride() != param.stride():
                    state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)
                elif name == "step" and value.dim() == 0:
                    target = param.device if fused else torch.device("cpu")
                    state[name] = value.to(target, torch.float32)


def restore(
    ckpt: Mapping[str, Any], parts: Mapping[str, Any], rank: int, world_size: int, source: Path
) -> str | None:
    """Load a checked checkpoint's states into `parts` and put this process's RNGs where they
    were when it was written. Returns a note when the job's size changed (no exact resume)."""
    for key, part in parts.items():
        if key == "net":
            load_weights(part, ckpt[key], source)
        elif ckpt[key]:  # a run without AMP saved an empty scaler state
            load_state(part, ckpt[key], key, source)
    states = ckpt.get("rng", [])
    if len(states) != world_size:
        return (
            f"note: {source} was written by {len(states)} process(es), this job has "
            f"{world_size}; dropout masks restart from the seed (not bit-exact)"
        )
    load_state(_RngState(), states[rank], "rng", source)
    return None


# ----------------------------------------------------------------------------- RNG states


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds the CUDA generators too


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop draws from, as tensors and plain types (weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, list(py_state), py_gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class _RngState:
    """set_rng_state behind load_state_dict, for load_state's one-line errors."""

    load_state_dict = staticmethod(set_rng_state)
