"""`dvsgkit evaluate CHECKPOINT`: accuracy, per-class accuracy and confusion matrix."""

from __future__ import annotations

from pathlib import Path

import click

from dvsgkit.config import DEFAULTS
from dvsgkit.constants import SPLITS
from dvsgkit_cli.common import DEVICE, frame_options, root_given, root_option


@click.command(context_settings={"show_default": True})
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@root_option
@frame_options("sample", checkpoint=True)
@click.option("--split", type=click.Choice(SPLITS), default="test", help="Which split to score.")
@click.option(
    "-b", "--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size,
    help="Batch size.",
)  # fmt: skip
@click.option(
    "--device", type=DEVICE, default=None,
    help="cpu, cuda or cuda:N.  [default: cuda:0 if available, else cpu]",
)  # fmt: skip
@click.option("-j", "--workers", type=click.IntRange(min=0), default=0, help="Loader workers.")
@click.option(
    "--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Where the JSON, text and PNG go.  [default: beside the checkpoint]",
)  # fmt: skip
@click.option("--progress/--no-progress", default=True, help="Progress bars while building frames.")
def evaluate(
    checkpoint: Path,
    root: Path,
    split: str,
    batch_size: int,
    device: str | None,
    workers: int,
    out_dir: Path | None,
    progress: bool,
    **frames: object,
) -> None:
    """Score CHECKPOINT (a dvsgkit checkpoint_*.pth, a run directory, or a SpikingJelly
    classify_dvsg checkpoint) on ROOT's frames, those it trained on unless frame options are
    given (a cut given replaces the recorded one): prints the report and writes
    <stem>_<split>_eval.json, <stem>_<split>_eval.txt and <stem>_<split>_confusion.png.
    Without --root (or $DVSGKIT_ROOT) a dvsgkit checkpoint is scored on the root its run
    trained on."""
    from dvsgkit.device import default_device
    from dvsgkit.evaluate import evaluate as run_evaluation
    from dvsgkit.evaluate import write_outputs

    result = run_evaluation(
        checkpoint, root=root if root_given() else None, split=split, batch_size=batch_size,
        device=device or default_device(), workers=workers, progress=progress, **frames,
    )  # fmt: skip
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    paths = write_outputs(result, out_dir or folder)
    click.echo(result.report())
    if not root_given() and result.source == "dvsgkit":
        click.echo(f"(dataset root {result.root}, as the run recorded; --root to change)")
    click.echo("")
    for kind, path in paths.items():
        click.echo(f"{kind}: {path}")
