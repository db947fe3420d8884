"""Options shared by the command modules (errors become one line in `dvsgkit_cli.main`)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

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


def checkpoint_frame_options(per: str) -> Callable[[Callable], Callable]:
    """-T and --split-by of a command that runs a checkpoint on frames (`per`: "sample",
    "window"): both default to the checkpoint's own recipe."""

    def decorate(command: Callable) -> Callable:
        command = click.option(
            "--split-by", type=click.Choice(SPLIT_BY), default=None,
            help="Frame cutting.  [default: the checkpoint's; "
            f"{SJ_FRAMES.split_by} for a SpikingJelly checkpoint]",
        )(command)  # fmt: skip
        return click.option(
            "-T", "T", type=click.IntRange(min=1), default=None,
            help=f"Frames per {per}.  [default: the checkpoint's T; "
            f"{SJ_FRAMES.T} for a SpikingJelly checkpoint]",
        )(command)  # fmt: skip

    return decorate


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
