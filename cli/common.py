"""Options shared by the command modules (errors become one line in `dvsgkit_cli.main`)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dvsgkit.constants import DEFAULT_ROOT, ROOT_ENV_VAR
from dvsgkit.frames import SPLIT_BY, FrameSpec

SJ_FRAMES = FrameSpec()  # a SpikingJelly checkpoint records no frames: its recipe's defaults

# OpenMP threads (torch's on the CPU) that wait for the others sleep instead of spinning. Beside
# other jobs on a few cores a spinning thread holds the core that a descheduled peer needs, and
# every parallel step waits for it (a demo training step on 2 busy cores: 3.5-11 s spinning,
# 1.1-1.6 s sleeping). Read when torch loads, which no command has done yet; the user's own
# OMP_WAIT_POLICY is kept (docs/training.md, "CPU threads").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

root_option = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_ROOT,
    envvar=ROOT_ENV_VAR,
    show_default=True,
    show_envvar=True,
    help="Dataset root (holds download/, extract/, events.h5 and the frame stores).",
)


def root_given() -> bool:
    """Whether the running command was given --root (on the command line or as $DVSGKIT_ROOT)
    rather than left at its default: commands on a checkpoint then use the root its run
    recorded."""
    defaults = (click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)
    return click.get_current_context().get_parameter_source("root") not in defaults


FRAME_HELP = {
    "T": "Frames per {per}, cut by --split-by{bins}.",
    "split_by": "number: equal event counts per frame; time: equal time windows "
    "(SpikingJelly's frames_number rules).",
    "duration_us": "One frame per DURATION (e.g. 50ms), as many as each {per} needs: "
    "SpikingJelly's fixed-duration frames.",
    "bin_us": "Fixed time bins of BIN (e.g. 10ms) from each {per}'s first event: Tonic's "
    "ToFrame(time_window); with -T, cut or padded to T bins.",
    "size": "Frame side in pixels: 128, or 64 / 32 downsampled as Tonic's Downsample does.",
    "denoise_us": "Drop events no 4-neighbour pixel preceded within DENOISE (e.g. 10ms): "
    "Tonic's Denoise(filter_time).",
    "integrator": "The frames of a custom integrator NAME, built in Python with "
    "build_frames(root, spec, integrate=NAME) (the other options but --size and --denoise "
    "do not apply).",
}
CUTS = tuple(FRAME_HELP)[:-1]  # the options `dvsgkit frames` can build from
FRAME_DEFAULTS = {  # shown in --help: the library's own defaults
    "T": f"{SJ_FRAMES.T}; with --duration or --bin, as many as each {{per}} needs",
    "split_by": SJ_FRAMES.split_by,
    "size": str(SJ_FRAMES.size),
}


def frame_options(
    per: str, *, checkpoint: bool = False, only: tuple[str, ...] = CUTS,
    T: tuple[str, ...] = ("-T",), duration: str = "--duration",
) -> Callable[[Callable], Callable]:  # fmt: skip
    """The frame options (FrameSpec's fields: -T, --split-by, --duration, --bin, --size,
    --denoise, and --integrator if `only` names it), each passing its field by name, as
    text: FrameSpec parses and checks them (`frame_spec`). `per`: "sample" or "window". With
    `checkpoint`, each defaults to the checkpoint's. `T`, `duration`: the options' names
    (--duration means something else to `show`)."""
    decls = {"T": T, "split_by": ("--split-by",), "duration_us": (duration,),
             "bin_us": ("--bin",), "size": ("--size",), "denoise_us": ("--denoise",),
             "integrator": ("--integrator",)}  # fmt: skip
    bins = "; with --bin, the bins kept (padded to T)" if "bin_us" in only else ""
    kinds = {"T": click.IntRange(min=1), "split_by": click.Choice(SPLIT_BY), "size": int}
    metavars = {"duration_us": "DURATION", "bin_us": "BIN", "size": "SIZE",
                "denoise_us": "DENOISE", "integrator": "NAME"}  # fmt: skip

    def decorate(command: Callable) -> Callable:
        for name in reversed(only):
            default = FRAME_DEFAULTS.get(name)
            if checkpoint:  # a SpikingJelly checkpoint records no frames: the recipe's defaults
                default = "the checkpoint's" + (
                    f"; {getattr(SJ_FRAMES, name)} for a SpikingJelly checkpoint" if default else ""
                )
            shown = f"  [default: {default.format(per=per)}]" if default else ""
            text = FRAME_HELP[name].format(per=per, bins=bins)
            value = None if checkpoint or name == "T" else getattr(SJ_FRAMES, name)
            command = click.option(*decls[name], name, type=kinds.get(name, str), default=value,
                                   help=text + shown, metavar=metavars.get(name),
                                   show_default=False)(command)  # fmt: skip
        return command

    return decorate


def checkpoint_frame_options(per: str) -> Callable[[Callable], Callable]:
    """-T and --split-by of a command that runs a checkpoint on frames (`per`: "sample",
    "window"): both default to the checkpoint's own recipe."""
    return frame_options(per, checkpoint=True, only=("T", "split_by"))


def frame_spec(options: dict[str, Any]) -> FrameSpec:
    """The FrameSpec of the frame options among a command's `options` (popped from them)."""
    given = {name: options.pop(name) for name in FRAME_HELP if name in options}
    return FrameSpec(**{name: value for name, value in given.items() if value is not None})


class Device(click.ParamType):
    """A torch device string dvsgkit runs on: cpu, cuda or cuda:N (checked without torch;
    whether this machine has that GPU is checked when the command runs)."""

    name = "device"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        text = str(value).strip()
        if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
            self.fail(f"{value!r} is not a supported device; use cpu, cuda or cuda:N", param, ctx)
        return text


DEVICE = Device()
device_option = click.option(
    "--device", type=DEVICE, default=None,
    help="cpu, cuda or cuda:N.  [default: cuda:0 if available, else cpu]",
)  # fmt: skip


def out_dir_option(default: Path | None, help: str) -> Callable[[Callable], Callable]:
    """--out-dir: a folder the command creates if need be (StorageError when it cannot)."""
    return click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path),
                        default=default, help=help)  # fmt: skip
