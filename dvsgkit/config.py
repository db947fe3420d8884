"""The training run's one config dataclass: built by the CLI, saved as JSON and in checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvsgkit.constants import DEFAULT_ROOT
from dvsgkit.errors import InputError
from dvsgkit.frames import SPLIT_BY as SPLIT_BYS  # the two frame-cutting rules, named there
from dvsgkit.frames import FrameSpec
from dvsgkit.fs import write_text

FRAME_FIELDS = tuple(FrameSpec.__dataclass_fields__)  # T, split_by, duration_us, ..., integrator
OPTIMIZERS = ("sgd", "adam")
SCHEDULERS = ("cosalr", "steplr")
NEURONS = ("lif", "plif")  # dvsgkit.model.net.NEURONS (not imported: config must not need torch)
INIT_TAU = 2.0  # PLIF's initial membrane time constant (the paper's)
DEFAULT_SEED = 2020  # classify_dvsg's _seed_
MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes 0 .. 2**32 - 1

# Fields that define what is learned. A run directory holds one recipe; resuming may change only the
# other fields (epochs to extend training, and where/how it executes: device, workers, amp, ...).
# Every frame option (FRAME_FIELDS) is part of the recipe.
RECIPE_FIELDS = ("T", "batch_size", "channels", "split_by", "opt", "lr", "momentum",
                 "lr_scheduler", "step_size", "gamma", "T_max", "seed", "sync_bn", "neuron",
                 "init_tau", *(f for f in FRAME_FIELDS if f not in ("T", "split_by")))  # fmt: skip
# Pairs of options that cannot run together, and why.
CONFLICTS = {
    ("fused", "sync_bn"): "--fused computes each process's own BatchNorm statistics; --sync-bn "
    "needs them synchronised across GPUs",
    ("compile_steps", "sync_bn"): "--compile runs the time steps with plain BatchNorm; --sync-bn "
    "replaces it",
    ("compile_steps", "cupy"): "--compile compiles the step-by-step network; --cupy runs the "
    "layer-by-layer one",
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; the defaults are SpikingJelly's `classify_dvsg`
    recipe's (docs/reference.md §6). The frames are `frame_spec`: FrameSpec's fields, flat keys
    in config.json (T and split_by as runs have always saved them; T is None for frames of
    varying count per sample)."""

    T: int | None = FrameSpec().T
    device: str = "cpu"
    batch_size: int = 16
    epochs: int = 64
    workers: int = 4
    channels: int = 128
    root: str = DEFAULT_ROOT
    out_dir: str = "runs"
    amp: bool = False
    cupy: bool = False
    opt: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    lr_scheduler: str = "cosalr"
    step_size: int = 32
    gamma: float = 0.1
    T_max: int = 32
    split_by: str = "number"
    seed: int = DEFAULT_SEED
    sync_bn: bool = False
    channels_last: bool = True  # NHWC weights and activations on CUDA (see train.py)
    progress: bool = True
    neuron: str = "lif"  # "plif": a learnable time constant per spiking layer
    init_tau: float = INIT_TAU
    fused: bool = False  # --cupy: fused BatchNorm + LIF + max-pool kernels per conv block
    compile_steps: bool = False  # step-by-step on CUDA: each time step compiled (CUDA graphs)
    # The other frame options (FrameSpec's fields; checked there).
    duration_us: int | None = None
    bin_us: int | None = None
    size: int = FrameSpec().size
    denoise_us: int | None = None
    integrator: str | None = None

    def __post_init__(self) -> None:
        spec = FrameSpec(**{name: getattr(self, name) for name in FRAME_FIELDS})
        for name in FRAME_FIELDS:  # normalised: durations in µs, T None or a number
            object.__setattr__(self, name, getattr(spec, name))
        for name in ("batch_size", "epochs", "channels", "step_size", "T_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise InputError(f"workers must be an integer >= 0, got {self.workers!r}")
        seed = self.seed
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
            raise InputError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
        for name in ("lr", "momentum", "gamma"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
        for name, choices in (("opt", OPTIMIZERS), ("lr_scheduler", SCHEDULERS),
                              ("neuron", NEURONS)):  # fmt: skip
            if getattr(self, name) not in choices:
                raise InputError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise InputError(f"lr must be > 0, got {self.lr!r}")
        if not self.init_tau > 1.0:
            raise InputError(f"init_tau must be > 1, got {self.init_tau!r}")
        if self.fused and not self.cupy:
            raise InputError(
                "--fused runs the fused CuPy kernels of the layer-by-layer network; add --cupy"
            )
        for (a, b), why in CONFLICTS.items():
            if getattr(self, a) and getattr(self, b):
                raise InputError(f"{why}: drop one of them")
        if self.neuron == "lif" and self.init_tau != INIT_TAU:
            raise InputError(
                f"--init-tau {self.init_tau} sets the PLIF's initial time constant; add "
                "--neuron plif (the LIF's tau is fixed at 2)"
            )

    @property
    def frame_spec(self) -> FrameSpec:
        """The frames this run trains on (the frame store's, the checkpoint's)."""
        return FrameSpec(**{name: getattr(self, name) for name in FRAME_FIELDS})

    @property
    def mode(self) -> str:
        """GestureNet mode: --cupy runs layer-by-layer with the fused LIF, else step-by-step."""
        return "layer" if self.cupy else "step"

    @property
    def backend(self) -> str:
        return "cupy" if self.cupy else "torch"

    def run_name(self) -> str:
        """The run directory's name, built like classify_dvsg's (`T_16_b_16_c_128_adam_lr_...`);
        the other recipe fields appear only when they leave the default, so the recipe's own
        configurations keep its names. Frames other than T by number or time are named as their
        store is (`duration_50000_b_16_...`)."""
        spec = self.frame_spec
        count = f"frames_number_{self.T}_split_by_{self.split_by}"
        frames = spec.name.replace(count, f"T_{self.T}") if spec.mode in SPLIT_BYS else spec.name
        name = f"{frames}_b_{self.batch_size}_c_{self.channels}_{self.opt}_lr_{self.lr}_"
        if self.lr_scheduler == "cosalr":
            name += f"cosalr_{self.T_max}"
        else:
            name += f"steplr_{self.step_size}_{self.gamma}"
        if self.split_by != DEFAULTS.split_by:
            name += f"_split_{self.split_by}"
        if self.seed != DEFAULT_SEED:
            name += f"_seed_{self.seed}"
        if self.sync_bn:
            name += "_syncbn"
        if self.neuron == "plif":
            name += "_plif" if self.init_tau == INIT_TAU else f"_plif_tau_{self.init_tau}"
        return name + "_amp" * self.amp + "_cupy" * self.cupy

    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.run_name()

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so it fits in JSON and in a `weights_only=True` checkpoint."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from `to_dict` output; unknown keys (a newer dvsgkit) are an error."""
        if not isinstance(data, dict):
            raise InputError(f"a config is a dict of options, got a {type(data).__name__}")
        unknown = sorted(map(str, set(data) - {f.name for f in dataclasses.fields(cls)}))
        if unknown:
            raise InputError(f"unknown config keys {unknown}; written by a newer dvsgkit?")
        try:
            return cls(**data)
        except TypeError as exc:  # a value of the wrong type that a check compared
            raise InputError(f"config values of the wrong type ({exc})") from exc

    def recipe_differences(self, other: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """{field: (self's value, other's value)} for every recipe field that differs."""
        return {
            name: (getattr(self, name), getattr(other, name))
            for name in RECIPE_FIELDS
            if getattr(self, name) != getattr(other, name)
        }

    def save_json(self, path: Path) -> None:
        """Write config.json atomically (a reader never sees half a file)."""
        write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load_json(cls, path: Path) -> TrainConfig:
        fix = "delete it or pick another run"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path} is not valid JSON ({exc}); {fix}") from exc
        try:
            return cls.from_dict(data)
        except InputError as exc:
            raise InputError(f"{path}: {exc}; {fix}") from exc


DEFAULTS = TrainConfig()  # the defaults of every option, for the CLI and the library alike
