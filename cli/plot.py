"""`dvsgkit plot RUN_DIR`: the run's loss and accuracy curves as a PNG."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="PNG to write.  [default: RUN_DIR/curves.png]",
)  # fmt: skip
def plot(run_dir: Path, out: Path | None) -> None:
    """Plot train/test loss and accuracy per epoch from RUN_DIR/metrics.jsonl."""
    from dvsgkit.plots import plot_run

    path = plot_run(run_dir, out)
    click.echo(f"curves: {path}")
