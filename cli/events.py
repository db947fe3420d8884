"""`dvsgkit events`: cut the recordings into labelled samples in ROOT/events.h5."""

from __future__ import annotations

import time
from pathlib import Path

import click

from dvsgkit.constants import BUILD_WORKERS, SPLITS
from dvsgkit_cli.common import root_option


@click.command("events")
@root_option
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=BUILD_WORKERS,
    show_default=True,
    help="Processes that parse recordings (the main process writes).",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar.")
def events(root: Path, workers: int, progress: bool) -> None:
    """Cut ROOT/extract/DvsGesture/ into labelled samples and write ROOT/events.h5."""
    from dvsgkit.eventcache.build import build_event_cache
    from dvsgkit.eventcache.layout import event_cache_path
    from dvsgkit.eventcache.read import EventCache

    path = event_cache_path(root)
    before = path.stat().st_mtime_ns if path.exists() else None
    start = time.perf_counter()
    build_event_cache(root, workers=workers, progress=progress)
    with EventCache(path) as cache:
        counts = {split: cache.num_samples(split) for split in SPLITS}
        total = int(sum(cache.offsets(s)[-1] for s in counts))
    seconds = time.perf_counter() - start
    if before is not None and path.stat().st_mtime_ns == before:
        click.echo(f"{path} is up to date ({counts['train']} train, {counts['test']} test samples)")
        return
    size = path.stat().st_size
    click.echo(
        f"wrote {path}: {counts['train']} train + {counts['test']} test samples, "
        f"{total:,} events, {size / 1e6:.1f} MB, {seconds:.1f} s "
        f"({total / max(seconds, 1e-9) / 1e6:.1f} M events/s)"
    )
