"""`dvsgkit info PATH`: summarise an event cache or a frame store."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("info")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--verify",
    is_flag=True,
    help="Read every byte: a frame store's samples against their checksums, an event cache's "
    "chunks against their Fletcher-32 checksums; list what is damaged.",
)
def info(path: Path, as_json: bool, verify: bool) -> None:
    """Summarise PATH (ROOT/events.h5 or a ROOT/frames_*.zarr store): samples per split and
    class, T, dtype, size on disk, provenance, and whether it is complete and intact (its
    files against its own record; with --verify, every sample against its checksum). Exits 1
    when the store is incomplete or damaged. For a dataset ROOT, lists what it holds
    (download/, extract/, events.h5, frame stores), each with the command that inspects it."""
    from dvsgkit.info import format_summary, summarize

    summary = summarize(path, verify=verify)
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
    if not summary["complete"]:
        raise SystemExit(1)
