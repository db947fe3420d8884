"""The `dvsgkit` click group; each command lives in its own module and is imported only when used.

Lazy loading keeps `dvsgkit download` free of torch, zarr and h5py imports, and `--help` fast.
"""

from __future__ import annotations

import importlib

import click

from dvsgkit import __version__
from dvsgkit.errors import DvsgkitError

# command name -> (module inside dvsgkit_cli, attribute, one-line help shown by `dvsgkit --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "download": ("download", "download", "Get and verify the dataset files, then extract them."),
    "synth": ("synth", "synth", "Write a synthetic DvsGesture-shaped dataset in the real layout."),
    "events": ("events", "events", "Cut the recordings into labelled samples in ROOT/events.h5."),
    "frames": ("frames", "frames", "Integrate the samples into T frames in a Zarr store."),
    "info": ("info", "info", "Summarise an event cache or a frame store."),
    "train": ("train", "train", "Train the spiking CNN (SpikingJelly's classify_dvsg recipe)."),
    "evaluate": ("evaluate", "evaluate", "Test accuracy, per-class accuracy, confusion matrix."),
    "predict": ("predict", "predict", "Classify the gestures of recordings, window by window."),
    "show": ("show", "show", "Animate a sample's frames or a recording's events (GIF, PNG)."),
    "plot": ("plot", "plot", "Plot a run's loss and accuracy curves."),
    "demo": ("demo", "demo", "Synthetic data -> events -> frames -> a short CPU training run."),
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"{__package__}.{module}"), attr)

    def invoke(self, ctx: click.Context) -> object:
        """Run the command; a DvsgkitError (or an OSError naming its file: a missing input, a
        folder it may not read) becomes one line and exit status 1. Anything else is a bug and
        keeps its traceback."""
        try:
            return super().invoke(ctx)
        except DvsgkitError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            if exc.filename is None:
                raise
            raise click.ClickException(str(exc)) from exc

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, _, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dvsgkit")
def cli() -> None:
    """dvsgkit: the IBM DVS128 Gesture dataset, from download to a trained spiking CNN."""


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
