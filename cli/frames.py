"""`dvsgkit frames`: integrate the event cache's samples into frames in a Zarr store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from dvsgkit.constants import BUILD_WORKERS
from dvsgkit.framestore.layout import DEFAULT_ZARR_FORMAT, ZARR_FORMATS
from dvsgkit_cli.common import frame_options, frame_spec, root_option


@click.command("frames")
@root_option
@frame_options("sample", T=("-T", "--frames"))
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=BUILD_WORKERS,
    show_default=True,
    help="Processes that integrate and compress samples.",
)
@click.option(
    "--zarr-format",
    type=click.Choice([str(f) for f in ZARR_FORMATS]),
    default=None,
    help="2: read by zarr-python 2 and 3 and tensorstore; 3: zarr-python >= 3 and tensorstore. "
    "A store in the other format is rebuilt.  [default: an existing store's format; "
    f"{DEFAULT_ZARR_FORMAT} for a new one]",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
def frames(
    root: Path, workers: int, zarr_format: str | None, progress: bool, **options: Any
) -> None:
    """Write ROOT/<name>.zarr from ROOT/events.h5 (built first when missing): T frames per
    sample by default (frames_number_{T}_split_by_{split_by}.zarr), or fixed-duration frames
    (duration_{µs}.zarr), fixed time bins (bin_{µs}[_T_{T}].zarr), downsampled (..._size_{SIZE})
    or denoised (..._denoise_{µs}). Durations are written 50ms, 1.5s, 200us (a bare number is
    seconds). Rerunning with the same inputs does nothing. An existing store is checked first,
    every sample against its checksum (as 'dvsgkit info --verify' does); a damaged one is
    rebuilt, saying what was wrong."""
    from dvsgkit.framestore.build import build_frame_store
    from dvsgkit.info import summarize

    spec = frame_spec(options)
    start = time.perf_counter()
    path = build_frame_store(
        root, spec, workers=workers, progress=progress, check_samples=True,
        zarr_format=None if zarr_format is None else int(zarr_format),
    )  # fmt: skip
    info = summarize(path)
    seconds = time.perf_counter() - start
    splits = info["splits"]
    counts = " + ".join(f"{s['samples']} {name}" for name, s in splits.items())
    dtype = splits["train"]["dtype"]
    if path.outcome in ("up to date", "built by another process"):
        by = ", built by another process while this one waited" * (path.outcome != "up to date")
        click.echo(f"{path} is up to date{by} ({counts} samples, {spec.describe()}, {dtype})")
        return
    raw = sum(s["raw_bytes"] for s in splits.values())
    click.echo(
        f"wrote {path}: {counts} samples, {spec.describe()}, {dtype}, "
        f"{info['bytes'] / 1e6:.1f} MB on disk ({raw / max(info['bytes'], 1):.1f}x compressed), "
        f"{seconds:.1f} s"
    )
