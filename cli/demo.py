"""`dvsgkit demo`: synthetic data -> events -> frames -> a short CPU training run, in minutes."""

from __future__ import annotations

from pathlib import Path

import click

from dvsgkit.demo import DEMO_DATA, DEMO_OUT_DIR, DEMO_ROOT


@click.command(context_settings={"show_default": True})
@click.option(
    "--root", type=click.Path(file_okay=False, path_type=Path), default=DEMO_ROOT,
    help="Where the synthetic dataset, events.h5 and frames go.",
)  # fmt: skip
@click.option(
    "--out-dir", type=click.Path(file_okay=False, path_type=Path), default=DEMO_OUT_DIR,
    help="Where the run directory goes (a previous demo run there is replaced).",
)  # fmt: skip
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the epochs.")
@click.option(
    "--seed", type=int, default=DEMO_DATA["seed"], help="Seed of the synthetic recordings."
)
@click.option("--progress/--no-progress", default=True, help="tqdm progress bars.")
def demo(root: Path, out_dir: Path, epochs: int | None, seed: int, progress: bool) -> None:
    """Write a small synthetic DvsGesture-shaped dataset, build events.h5 and a frame store,
    train a small network on the CPU, then plot its curves and evaluate its best checkpoint."""
    from dvsgkit.demo import run_demo

    result = run_demo(root, out_dir, epochs=epochs, seed=seed, progress=progress)
    click.echo(
        f"\ndemo done in {result.seconds:.0f} s: test accuracy {100 * result.final_test_acc:.1f} % "
        f"(best {100 * result.max_test_acc:.1f} %, chance 9.1 %)\n"
        f"  run directory:    {result.run_dir}\n"
        f"  curves:           {result.curves}\n"
        f"  confusion matrix: {result.confusion}\n"
        f"  best checkpoint:  {result.best_checkpoint}\n"
        "next:"
    )
    for command in result.next_commands():
        click.echo(f"  {command}")
