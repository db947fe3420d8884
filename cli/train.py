"""`dvsgkit train`: SpikingJelly's `classify_dvsg` options, on the frame store; works under
torchrun. Every option that sets a TrainConfig field takes its default from `DEFAULTS`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dvsgkit.config import DEFAULTS, MAX_SEED, NEURONS, OPTIMIZERS, SCHEDULERS, TrainConfig
from dvsgkit_cli.common import (
    DEVICE,
    FRAME_HELP,
    frame_options,
    frame_spec,
    root_given,
    root_option,
)


def _field(name: str, *decls: str, help: str, **kwargs: Any) -> Callable:
    """The option that sets TrainConfig's `name` (a flag when it is a bool), DEFAULTS' default."""
    default = getattr(DEFAULTS, name)
    if isinstance(default, bool) and len(decls) == 1 and "/" not in decls[0]:
        kwargs["is_flag"] = True
    return click.option(*decls, name, default=default, help=help, **kwargs)


AT_LEAST_1 = click.IntRange(min=1)
OPTIONS = [
    frame_options("sample", only=tuple(FRAME_HELP)),  # -T, --split-by, ..., --integrator
    click.option("--device", type=DEVICE, default=None,
                 help="cpu, cuda or cuda:N.  [default: cuda:0 if available, else cpu]"),
    _field("batch_size", "-b", "--batch-size", type=AT_LEAST_1, help="Batch size per process."),
    _field("epochs", "--epochs", type=AT_LEAST_1,
           help="Total epochs (a resumed run counts the ones done)."),
    _field("workers", "-j", "--workers", type=click.IntRange(min=0),
           help="Data loading workers (and frame-building processes)."),
    _field("channels", "--channels", type=AT_LEAST_1, help="Conv channels of the network."),
    root_option,
    _field("out_dir", "--out-dir", type=click.Path(file_okay=False, path_type=Path),
           help="Where run directories are made."),
    click.option("--resume", type=click.Path(exists=True, path_type=Path), default=None,
                 help="Continue from a checkpoint (.pth) or run directory; its epoch + 1 is the "
                 "first one run."),
    click.option("--allow-new-store", is_flag=True,
                 help="With --resume: continue even if ROOT's frame store is not the one the run "
                 "trained on (other events, frame options or sample counts)."),
    _field("amp", "--amp", help="Mixed precision: float16 autocast + GradScaler (CUDA only)."),
    _field("cupy", "--cupy",
           help="Layer-by-layer network with the fused CuPy LIF (else step-by-step)."),
    _field("fused", "--fused/--no-fused",
           help="With --cupy: BatchNorm + LIF + max-pool of each conv block as one fused kernel "
           "pair."),
    _field("compile_steps", "--compile/--no-compile",
           help="Step-by-step network on CUDA: torch.compile each time step (fused kernels "
           "replayed as CUDA graphs; needs Triton; ignored on CPU)."),
    _field("opt", "--opt", type=click.Choice(OPTIMIZERS), help="Optimizer."),
    _field("lr", "--lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate."),
    _field("momentum", "--momentum", type=click.FloatRange(min=0), help="SGD momentum."),
    _field("lr_scheduler", "--lr-scheduler", type=click.Choice(SCHEDULERS),
           help="Cosine annealing or step decay, stepped once per epoch."),
    _field("step_size", "--step-size", type=AT_LEAST_1, help="StepLR: epochs between decays."),
    _field("gamma", "--gamma", type=click.FloatRange(min=0), help="StepLR: decay factor."),
    _field("T_max", "--T-max", type=AT_LEAST_1, help="CosineAnnealingLR: period in epochs."),
    _field("seed", "--seed", type=click.IntRange(0, MAX_SEED),
           help="Seeds weights, dropout and the shuffle order."),
    _field("sync_bn", "--sync-bn",
           help="Under torchrun: synchronise BatchNorm statistics across processes."),
    _field("channels_last", "--channels-last/--no-channels-last",
           help="NHWC memory layout on CUDA, the input included (ignored on CPU)."),
    _field("progress", "--progress/--no-progress", help="tqdm progress bars."),
    _field("neuron", "--neuron", type=click.Choice(NEURONS),
           help="Spiking neuron: LIF (tau 2) or PLIF (a learned time constant per spiking layer)."),
    _field("init_tau", "--init-tau", type=click.FloatRange(min=1, min_open=True),
           help="--neuron plif: initial membrane time constant of every spiking layer."),
]  # fmt: skip


def _options(command: Callable) -> Callable:
    for option in reversed(OPTIONS):  # the first in OPTIONS is the first in --help
        command = option(command)
    return command


@click.command(context_settings={"show_default": True})
@_options
def train(
    resume: Path | None,
    allow_new_store: bool,
    device: str | None,
    root: Path,
    out_dir: Path,
    **options: object,
) -> None:
    """Train the spiking CNN with SpikingJelly's classify_dvsg recipe on ROOT's frame store of
    the frame options, which is built first if missing (with --duration or --bin without -T,
    batches are padded to their longest sample and each sample's firing rate is averaged over
    its own frames; with --size the classifier takes the smaller frames). Writes
    OUT_DIR/<run name>/: config.json, metrics.jsonl, checkpoint_latest.pth,
    checkpoint_max.pth, tensorboard/.

    --resume without --root (or $DVSGKIT_ROOT) continues on the dataset root the run recorded.

    For several GPUs (or CPU processes with gloo) run the same command under
    `torchrun --nproc_per_node K`; --batch-size is per process.
    """
    from dvsgkit.device import default_device
    from dvsgkit.train import train as run_training

    if allow_new_store and resume is None:
        raise click.UsageError("--allow-new-store applies to --resume only")
    frames = frame_spec(options).to_dict()
    config = TrainConfig(
        device=device or default_device(), root=str(root), out_dir=str(out_dir), **options, **frames
    )
    result = run_training(
        config, resume=resume, allow_new_store=allow_new_store, root_from_run=not root_given()
    )
    if result.main and result.last:
        click.echo(
            f"done: max test accuracy {100 * result.max_test_acc:.2f} %; run directory "
            f"{result.run_dir} (plot it with: dvsgkit plot {result.run_dir})"
        )
