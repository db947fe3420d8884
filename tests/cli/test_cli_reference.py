"""docs/cli.md is the commands' own help text: regenerated, it must equal the committed page."""

from __future__ import annotations

from pathlib import Path

from dvsgkit_cli.main import COMMANDS
from dvsgkit_cli.reference import render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_reference_is_current() -> None:
    assert PAGE.read_text() == render(), (
        "docs/cli.md is stale: run 'python -m dvsgkit_cli.reference > docs/cli.md'"
    )


def test_cli_reference_has_every_command_and_its_options() -> None:
    page = render()
    for name in COMMANDS:
        assert f"## `dvsgkit {name}`" in page
        assert f"Usage: dvsgkit {name} [OPTIONS]" in page
    assert "--zarr-format [2|3]" in page and "-h, --help" in page
