"""Options and error handling shared by the command modules."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import click

from dvsgkit.constants import DEFAULT_ROOT, ROOT_ENV_VAR
from dvsgkit.store.errors import LockTimeout, StoreWriteError

root_option = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_ROOT,
    envvar=ROOT_ENV_VAR,
    show_default=True,
    show_envvar=True,
    help="Dataset root (holds download/, extract/, events.h5 and the frame stores).",
)


@contextlib.contextmanager
def user_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Turn the library's expected errors into one-line `click.ClickException`s (exit 1, no
    traceback). Unexpected errors still raise with their traceback: those are bugs."""
    kinds = kinds or (ValueError, FileNotFoundError, FileExistsError, PermissionError)
    # A store that cannot be written (full disk, read-only) or whose lock is held too long: the
    # message names the path and the cause, whichever command was building it.
    kinds = (*kinds, StoreWriteError, LockTimeout)
    try:
        yield
    except kinds as exc:
        raise click.ClickException(str(exc)) from exc
