"""`dvsgkit predict CHECKPOINT RECORDING...` (or `--live udp://HOST:PORT`): which gestures a
trained network finds, and when."""

from __future__ import annotations

from pathlib import Path

import click

from dvsgkit.predict.outputs import DEFAULT_OUT_DIR
from dvsgkit.predict.windows import DEFAULT_BATCH, DEFAULT_HOP_US, DEFAULT_WINDOW_US, WINDOW_MODES
from dvsgkit_cli.common import checkpoint_frame_options, device_option, out_dir_option


@click.command(context_settings={"show_default": True})
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.argument("recordings", nargs=-1, type=click.Path(path_type=Path))
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
@click.option(
    "--roi", default=None, metavar="X,Y,W,H",
    help="The region of the sensor mapped onto 128x128 (sensor pixels).  "
    "[default: the largest centred square]",
)  # fmt: skip
@click.option(
    "--live", default=None, metavar="udp://HOST:PORT",
    help="Classify the events that come to this UDP address (faery's t64_x16_y16_on8 format) "
    "instead of RECORDINGs; Ctrl-C stops.",
)  # fmt: skip
@click.option("--sensor", default=None, metavar="WxH",
              help="With --live: the camera's sensor size, e.g. 346x260.")  # fmt: skip
@click.option(
    "--duration", default=None,
    help="With --live: stop after this long (s, ms or us).  [default: until Ctrl-C]",
)  # fmt: skip
@checkpoint_frame_options("window")
@click.option(
    "-b", "--batch-size", type=click.IntRange(min=1), default=None,
    help="Windows per forward pass.  "
    f"[default: {DEFAULT_BATCH['cpu']} on the CPU, {DEFAULT_BATCH['cuda']} on a GPU]",
)  # fmt: skip
@device_option
@out_dir_option(
    DEFAULT_OUT_DIR,
    "Where the CSV, JSON and PNG (with --live: live_predictions.jsonl) go (created if need be).",
)
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
    roi: str | None,
    live: str | None,
    sensor: str | None,
    duration: str | None,
    **options: object,
) -> None:
    """Classify RECORDING(s) with CHECKPOINT (dvsgkit or SpikingJelly) and write
    <stem>_predictions.csv, <stem>_predictions.json and <stem>_timeline.png for each in
    --out-dir: AEDAT 3.1 .aedat, .npz / .h5 event arrays t, x, y, p (DVS128), or, with the
    cameras extra, AEDAT 4, EVT .raw, .dat and .es files of any sensor (--roi). Every
    recording and labels file is checked, and every recording classified, before any file is
    written. With --live, classify a UDP event stream as it comes: one line per window, and
    OUT_DIR/live_predictions.jsonl."""
    from dvsgkit.io.recordings import parse_duration
    from dvsgkit.io.roi import parse_roi

    window_us, hop_us = parse_duration(window, "--window"), parse_duration(hop, "--hop")
    region = parse_roi(roi) if roi is not None else None
    if live is not None:
        return _live(checkpoint, recordings, labels, live, sensor, duration, region,
                     window_us=window_us, hop_us=hop_us, **options)  # fmt: skip
    if not recordings:
        raise click.UsageError("give RECORDING(s), or --live udp://HOST:PORT")
    for name, value in (("--sensor", sensor), ("--duration", duration)):
        if value is not None:
            raise click.UsageError(f"{name} is for --live (a recording states its sensor size)")
    if labels and len(labels) != len(recordings):
        raise click.BadParameter(
            f"got {len(labels)} labels file(s) for {len(recordings)} recording(s); give one "
            "--labels per RECORDING, in order",
            param_hint="--labels",
        )
    from dvsgkit.predict import predict_recordings
    from dvsgkit.predict.outputs import summary

    for result, paths in predict_recordings(
        checkpoint, recordings, labels, window_us=window_us, hop_us=hop_us, roi=region, **options
    ):
        click.echo(summary(result))
        for kind, path in paths.items():
            click.echo(f"  {kind}: {path}")


def _live(
    checkpoint: Path,
    recordings: tuple[Path, ...],
    labels: tuple[Path, ...],
    url: str,
    sensor: str | None,
    duration: str | None,
    roi: object,
    mode: str,
    progress: bool,
    **options: object,
) -> None:
    """`predict --live`: the options that apply to it checked, then `predict_live`."""
    from dvsgkit.io.recordings import parse_duration
    from dvsgkit.io.roi import parse_sensor
    from dvsgkit.predict.live import predict_live

    if recordings or labels or mode != WINDOW_MODES[0]:
        raise click.UsageError(
            "--live classifies a stream by sliding windows: give no RECORDING, --labels or "
            "--windows labels with it"
        )
    if sensor is None:
        raise click.UsageError("--live needs --sensor WxH: the stream does not say its size")
    result = predict_live(
        checkpoint, url, parse_sensor(sensor), roi=roi,
        duration_us=None if duration is None else parse_duration(duration, "--duration"),
        echo=click.echo, note=lambda line: click.echo(line, err=True), **options,
    )  # fmt: skip
    click.echo(result.line())
    click.echo(f"  jsonl: {result.path}")
