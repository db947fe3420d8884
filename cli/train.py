"""`dvsgkit train`: the seed's classify_dvsg options, on the frame store; works under torchrun.

Every option that sets a TrainConfig field takes its default from TrainConfig (`DEFAULTS`)."""

from __future__ import annotations

from pathlib import Path

import click

from dvsgkit.config import (
    DEFAULTS,
    MAX_SEED,
    NEURONS,
    OPTIMIZERS,
    SCHEDULERS,
    SPLIT_BYS,
    TrainConfig,
)
from dvsgkit_cli.common import DEVICE, root_given, root_option


@click.command(context_settings={"show_default": True})
@click.option(
    "-T", "T", type=click.IntRange(min=1), default=DEFAULTS.T,
    help="Time steps (frames) per sample.",
)  # fmt: skip
@click.option(
    "--device",
    type=DEVICE,
    default=None,
    help="cpu, cuda or cuda:N.  [default: cuda:0 if available, else cpu]",
)
@click.option(
    "-b", "--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size,
    help="Batch size per process.",
)  # fmt: skip
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=DEFAULTS.epochs,
    help="Total epochs (a resumed run counts the ones done).",
)
@click.option(
    "-j",
    "--workers",
    type=click.IntRange(min=0),
    default=DEFAULTS.workers,
    help="Data loading workers (and frame-building processes).",
)
@click.option(
    "--channels", type=click.IntRange(min=1), default=DEFAULTS.channels,
    help="Conv channels of the network.",
)  # fmt: skip
@root_option
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(DEFAULTS.out_dir),
    help="Where run directories are made.",
)
@click.option(
    "--resume",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Continue from a checkpoint (.pth) or run directory; its epoch + 1 is the first one run.",
)
@click.option(
    "--allow-new-store",
    is_flag=True,
    help="With --resume: continue even if ROOT's frame store is not the one the run trained on "
    "(other events, T, split_by or sample counts).",
)
@click.option(
    "--amp", is_flag=True, default=DEFAULTS.amp,
    help="Mixed precision: float16 autocast + GradScaler (CUDA only).",
)  # fmt: skip
@click.option(
    "--cupy",
    is_flag=True,
    default=DEFAULTS.cupy,
    help="Layer-by-layer network with the fused CuPy LIF (else step-by-step).",
)
@click.option(
    "--fused/--no-fused",
    default=DEFAULTS.fused,
    help="With --cupy: BatchNorm + LIF + max-pool of each conv block as one fused kernel pair.",
)
@click.option(
    "--compile/--no-compile",
    "compile_steps",
    default=DEFAULTS.compile_steps,
    help="Step-by-step network on CUDA: torch.compile each time step (fused kernels replayed "
    "as CUDA graphs; needs Triton; ignored on CPU).",
)
@click.option("--opt", type=click.Choice(OPTIMIZERS), default=DEFAULTS.opt, help="Optimizer.")
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.lr,
    help="Learning rate.",
)  # fmt: skip
@click.option(
    "--momentum", type=click.FloatRange(min=0), default=DEFAULTS.momentum, help="SGD momentum."
)
@click.option(
    "--lr-scheduler",
    type=click.Choice(SCHEDULERS),
    default=DEFAULTS.lr_scheduler,
    help="Cosine annealing or step decay, stepped once per epoch.",
)
@click.option(
    "--step-size", type=click.IntRange(min=1), default=DEFAULTS.step_size,
    help="StepLR: epochs between decays.",
)  # fmt: skip
@click.option(
    "--gamma", type=click.FloatRange(min=0), default=DEFAULTS.gamma, help="StepLR: decay factor."
)
@click.option(
    "--T-max",
    "T_max",
    type=click.IntRange(min=1),
    default=DEFAULTS.T_max,
    help="CosineAnnealingLR: period in epochs.",
)
@click.option(
    "--split-by",
    type=click.Choice(SPLIT_BYS),
    default=DEFAULTS.split_by,
    help="How events are cut into frames.",
)
@click.option(
    "--seed",
    type=click.IntRange(0, MAX_SEED),
    default=DEFAULTS.seed,
    help="Seeds weights, dropout and the shuffle order.",
)
@click.option(
    "--sync-bn",
    is_flag=True,
    default=DEFAULTS.sync_bn,
    help="Under torchrun: synchronise BatchNorm statistics across processes.",
)
@click.option(
    "--channels-last/--no-channels-last",
    default=DEFAULTS.channels_last,
    help="NHWC memory layout on CUDA, the input included (ignored on CPU).",
)
@click.option("--progress/--no-progress", default=DEFAULTS.progress, help="tqdm progress bars.")
@click.option(
    "--neuron",
    type=click.Choice(NEURONS),
    default=DEFAULTS.neuron,
    help="Spiking neuron: LIF (tau 2) or PLIF (a learned time constant per spiking layer).",
)
@click.option(
    "--init-tau",
    type=click.FloatRange(min=1, min_open=True),
    default=DEFAULTS.init_tau,
    help="--neuron plif: initial membrane time constant of every spiking layer.",
)
def train(
    resume: Path | None,
    allow_new_store: bool,
    device: str | None,
    root: Path,
    out_dir: Path,
    **options: object,
) -> None:
    """Train the spiking CNN with the seed recipe on ROOT's frame store, which is built
    first if missing. Writes OUT_DIR/<run name>/: config.json, metrics.jsonl,
    checkpoint_latest.pth, checkpoint_max.pth, tensorboard/.

    --resume without --root (or $DVSGKIT_ROOT) continues on the dataset root the run recorded.

    For several GPUs (or CPU processes with gloo) run the same command under
    `torchrun --nproc_per_node K`; --batch-size is per process.
    """
    from dvsgkit.device import default_device
    from dvsgkit.train import train as run_training

    if allow_new_store and resume is None:
        raise click.UsageError("--allow-new-store applies to --resume only")
    config = TrainConfig(
        device=device or default_device(), root=str(root), out_dir=str(out_dir), **options
    )
    result = run_training(
        config, resume=resume, allow_new_store=allow_new_store, root_from_run=not root_given()
    )
    if result.main and result.last:
        click.echo(
            f"done: max test accuracy {100 * result.max_test_acc:.2f} %; run directory "
            f"{result.run_dir} (plot it with: dvsgkit plot {result.run_dir})"
        )
