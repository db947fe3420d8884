"""`dvsgkit show`: animate a sample's frames, or a stretch of a recording's events."""

from __future__ import annotations

from pathlib import Path

import click

from dvsgkit.constants import SPLITS
from dvsgkit.show import DEFAULT_FPS, MAX_FPS, MIN_FPS
from dvsgkit_cli.common import frame_options, frame_spec, out_dir_option, root_option


@click.command(context_settings={"show_default": True})
@click.argument("recording", required=False, type=click.Path(dir_okay=False, path_type=Path))
@root_option
@click.option("--split", type=click.Choice(SPLITS), default="test", help="Sample mode: the split.")
@click.option("--index", type=click.IntRange(min=0), default=None, help="Sample mode: which one.")
@frame_options("sample", duration="--frame-duration")  # sample mode's frames
@click.option("--start", default="0s", help="Recording mode: from this long after the first event.")
@click.option("--duration", default="3s", help="Recording mode: for this long.")
@click.option("--fps", type=float, default=DEFAULT_FPS,
              help=f"Recording mode: frames per second of recording time ({MIN_FPS:g} to "
              f"{MAX_FPS:.0f}).")  # fmt: skip
@click.option("--roi", default=None, metavar="X,Y,W,H",
              help="Recording mode: the region of the sensor mapped onto 128x128, as for "
              "predict.  [default: the largest centred square]")  # fmt: skip
@out_dir_option(Path("."), "Where the GIF and PNG go.")
def show(
    recording: Path | None,
    root: Path,
    split: str,
    index: int | None,
    start: str,
    duration: str,
    fps: float,
    roi: str | None,
    out_dir: Path,
    **frames: object,
) -> None:
    """Write pictures of the data. With --index: sample INDEX of --split from ROOT/events.h5 as
    frames of the frame options, --frame-duration being `dvsgkit frames --duration`
    (<split>_<index>_T<T>.gif, or <split>_<index>_<store name>.gif for other options, and a
    .png grid with a colour key), captioned with frame number and true label. With RECORDING
    (as for predict, in time order): its events from --start for --duration as a GIF at --fps of
    the 128x128 sensor the network sees (--roi mapped onto it), captioned with the time and the
    gesture of <stem>_labels.csv when one sits beside it, and a PNG of the whole sensor with the
    region outlined. OFF events are orange, ON events blue."""
    from dvsgkit.io.recordings import parse_duration
    from dvsgkit.io.roi import parse_roi
    from dvsgkit.show import show_recording, show_sample

    if recording is None and index is None:
        raise click.UsageError("give RECORDING, or --index for a sample of --split")
    if recording is not None and index is not None:
        raise click.UsageError("give either RECORDING or --index (a sample of --split), not both")
    if recording is None and roi is not None:
        raise click.UsageError("--roi is for RECORDING (a sample is on the 128x128 sensor)")
    if recording is not None:
        shown = show_recording(
            recording, parse_duration(start, "--start", allow_zero=True),
            parse_duration(duration, "--duration"), fps, out_dir,
            None if roi is None else parse_roi(roi),
        )  # fmt: skip
    else:
        shown = show_sample(root, split, index, frame_spec(frames), out_dir)
    click.echo(f"gif: {shown.gif} ({shown.frames} frames of {shown.size[0]}x{shown.size[1]})")
    if shown.png is not None:
        click.echo(f"png: {shown.png}")
