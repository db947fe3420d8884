"""`dvsgkit download`: check ROOT/download/, fetch what is missing from a mirror, extract."""

from __future__ import annotations

from pathlib import Path

import click

from dvsgkit.constants import DATASET_DIR, EXTRACT_DIR, MAPPING_NAME, RESOURCES
from dvsgkit.io.download import (
    archive_status,
    check_resources,
    download_dir,
    format_table,
    install_mapping,
    manual_steps,
)
from dvsgkit.io.extract import safe_extract
from dvsgkit.io.fetch import fetch_missing
from dvsgkit_cli.common import root_option


@click.command("download")
@root_option
@click.option(
    "--from",
    "source",
    metavar="URL_OR_DIR",
    help="A mirror holding the four files: http(s):// or file:// URL, or a local directory. "
    "Without it, missing files are listed with the manual steps (IBM's Box needs a browser).",
)
@click.option(
    "--rehash",
    is_flag=True,
    help="Recompute every md5 instead of trusting ROOT/download/.dvsgkit-md5.json "
    "(which skips files whose size and mtime are unchanged).",
)
@click.pass_context
def download(ctx: click.Context, root: Path, source: str | None, rehash: bool) -> None:
    """Get and verify the dataset files in ROOT/download/, then extract them into ROOT/extract/.

    Exits 0 only when all four files have their published md5 and the archive is extracted."""
    click.echo(f"Checking {download_dir(root)}")
    statuses = check_resources(root, resources=RESOURCES, rehash=rehash, progress=True)
    click.echo(format_table(statuses))
    if not all(s.verified for s in statuses):
        if source is None:
            click.echo("", err=True)
            click.echo(manual_steps(root, statuses), err=True)
            ctx.exit(1)
        todo = sum(not s.verified for s in statuses)
        click.echo(f"\nFetching {todo} file(s) from {source}")
        statuses = fetch_missing(root, source, statuses, progress=True)
        click.echo(format_table(statuses))

    archive = archive_status(statuses)
    if archive is not None and archive.verified:
        dest = Path(root) / EXTRACT_DIR
        if safe_extract(archive.path, dest, archive_md5=archive.resource.md5, progress=True):
            click.echo(f"Extracted {archive.path.name} into {dest}")
        else:
            click.echo(f"{dest} already holds a complete extraction of {archive.path.name}")
        if not (dest / DATASET_DIR).is_dir():
            raise click.ClickException(
                f"{archive.path} holds no {DATASET_DIR}/ folder: not the DvsGesture archive"
            )
        mapping = next((s for s in statuses if s.resource.name == MAPPING_NAME), None)
        if mapping is not None and mapping.verified:
            install_mapping(root)

    failed = [s for s in statuses if not s.verified]
    if failed:
        lines = [f"  {s.resource.name}: {s.error or s.state}" for s in failed]
        raise click.ClickException(
            f"{len(failed)} of {len(statuses)} files not verified:\n" + "\n".join(lines)
        )
    click.echo(f"Dataset ready in {Path(root) / EXTRACT_DIR}; next: dvsgkit events --root {root}")
