"""`dvsgkit frames`: integrate the event cache's samples into T frames in a Zarr store."""

from __future__ import annotations

import time
from pathlib import Path

import click

from dvsgkit_cli.common import root_option, user_errors


@click.command("frames")
@root_option
@click.option(
    "-T",
    "--frames",
    "T",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Frames per sample.",
)
@click.option(
    "--split-by",
    type=click.Choice(["number", "time"]),
    default="number",
    show_default=True,
    help="Equal event counts per frame, or equal time windows (SpikingJelly's two rules).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Processes that integrate and compress samples.",
)
@click.option(
    "--zarr-format",
    type=click.Choice(["2", "3"]),
    default="2",
    show_default=True,
    help="2: read by zarr-python 2 and 3 and tensorstore; 3: zarr-python >= 3 and tensorstore.",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
def frames(
    root: Path, T: int, split_by: str, workers: int, zarr_format: str, progress: bool
) -> None:
    """Write ROOT/frames_number_{T}_split_by_{split_by}.zarr from ROOT/events.h5 (built first
    when missing). Rerunning with the same inputs does nothing."""
    import zarr

    from dvsgkit.store.events import WorkerError
    from dvsgkit.store.frames import build_frame_store, frame_store_path
    from dvsgkit.store.info import summarize

    path = frame_store_path(root, T, split_by)
    try:
        before = zarr.open_group(path, mode="r").attrs.get("build_id")
    except Exception:  # absent or not a store: the build decides what to say about it
        before = None
    start = time.perf_counter()
    # Ctrl-C and kill (SIGTERM) stop the build cleanly: it removes its temporary folder.
    # The event pipeline's AedatError is a ValueError; WorkerError: one of its workers died.
    with user_errors(ValueError, FileNotFoundError, FileExistsError, PermissionError, WorkerError):
        build_frame_store(
            root, T, split_by, workers=workers, progress=progress, zarr_format=int(zarr_format)
        )
        info = summarize(path)
    seconds = time.perf_counter() - start
    splits = info["splits"]
    counts = " + ".join(f"{s['samples']} {name}" for name, s in splits.items())
    dtype = splits["train"]["dtype"]
    if before is not None and info["provenance"]["build_id"] == before:
        click.echo(f"{path} is up to date ({counts} samples, T={T}, {dtype})")
        return
    raw = sum(s["raw_bytes"] for s in splits.values())
    click.echo(
        f"wrote {path}: {counts} samples, T={T}, split_by={split_by}, {dtype}, "
        f"{info['bytes'] / 1e6:.1f} MB on disk ({raw / max(info['bytes'], 1):.1f}x compressed), "
        f"{seconds:.1f} s"
    )
