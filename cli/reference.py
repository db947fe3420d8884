"""docs/cli.md, written from the commands themselves so that it cannot drift from them.

`python -m dvsgkit_cli.reference > docs/cli.md` rewrites it; a test fails when it is stale.
"""

from __future__ import annotations

import click

from dvsgkit_cli.main import COMMANDS, cli

HEADER = """# Command-line reference

Every option of every `dvsgkit` command, as `dvsgkit COMMAND --help` prints it. This page is
generated: `python -m dvsgkit_cli.reference > docs/cli.md`.
"""


def render() -> str:
    """The markdown page: one section per command, its help text in a code block."""
    parts = [HEADER]
    top = click.Context(cli, info_name="dvsgkit", terminal_width=100, max_content_width=100,
                        **cli.context_settings)  # fmt: skip
    for name in COMMANDS:
        command = cli.get_command(top, name)
        assert command is not None  # every COMMANDS entry resolves (tested)
        ctx = click.Context(command, info_name=name, parent=top, **command.context_settings)
        parts.append(f"## `dvsgkit {name}`\n\n```text\n{command.get_help(ctx).rstrip()}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
