"""`dvsgkit predict CHECKPOINT RECORDING...`: which gestures a trained network finds, and when."""

from __future__ import annotations

from pathlib import Path

import click

from dvsgkit.predict.outputs import DEFAULT_OUT_DIR
from dvsgkit.predict.windows import DEFAULT_BATCH, DEFAULT_HOP_US, DEFAULT_WINDOW_US, WINDOW_MODES
from dvsgkit_cli.common import checkpoint_frame_options, device_option, out_dir_option


@click.command(context_settings={"show_default": True})
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.argument("recordings", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--labels", "labels", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
    help="A labels CSV (class,startTime_usec,endTime_usec) to score against; once per "
    "RECORDING, in the same order.",
)  # fmt: skip
@click.option(
    "--windows", "mode", type=click.Choice(WINDOW_MODES), default=WINDOW_MODES[0],
    help="sliding: windows of --window every --hop; labels: exactly the labelled gestures "
    "(the samples 'dvsgkit evaluate' scores).",
)  # fmt: skip
@click.option("--window", default=f"{DEFAULT_WINDOW_US / 1e6:g}s",
              help="Window length (s, ms or us).")  # fmt: skip
@click.option("--hop", default=f"{DEFAULT_HOP_US / 1e6:g}s",
              help="Step between window starts (s, ms or us).")  # fmt: skip
@checkpoint_frame_options("window")
@click.option(
    "-b", "--batch-size", type=click.IntRange(min=1), default=None,
    help="Windows per forward pass.  "
    f"[default: {DEFAULT_BATCH['cpu']} on the CPU, {DEFAULT_BATCH['cuda']} on a GPU]",
)  # fmt: skip
@device_option
@out_dir_option(DEFAULT_OUT_DIR, "Where the CSV, JSON and PNG go (created if need be).")
@click.option(
    "--progress/--no-progress", default=True,
    help="A progress bar over the recordings (on stderr) when there are several.",
)  # fmt: skip
def predict(
    checkpoint: Path,
    recordings: tuple[Path, ...],
    labels: tuple[Path, ...],
    window: str,
    hop: str,
    **options: object,
) -> None:
    """Classify RECORDING(s) (AEDAT 3.1 .aedat, or .npz / .h5 event arrays t, x, y, p) with
    CHECKPOINT (dvsgkit or SpikingJelly) and write <stem>_predictions.csv,
    <stem>_predictions.json and <stem>_timeline.png for each in --out-dir. Every recording
    and labels file is checked, and every recording classified, before any file is written."""
    from dvsgkit.io.recordings import parse_duration
    from dvsgkit.predict import predict_recordings
    from dvsgkit.predict.outputs import summary

    if labels and len(labels) != len(recordings):
        raise click.BadParameter(
            f"got {len(labels)} labels file(s) for {len(recordings)} recording(s); give one "
            "--labels per RECORDING, in order",
            param_hint="--labels",
        )
    window_us, hop_us = parse_duration(window, "--window"), parse_duration(hop, "--hop")
    for result, paths in predict_recordings(
        checkpoint, recordings, labels, window_us=window_us, hop_us=hop_us, **options
    ):
        click.echo(summary(result))
        for kind, path in paths.items():
            click.echo(f"  {kind}: {path}")
