"""`dvsgkit synth`: write a synthetic DvsGesture-shaped dataset in the real layout."""

from __future__ import annotations

from pathlib import Path

import click

from dvsgkit import synth as defaults
from dvsgkit_cli.common import root_option


@click.command("synth", context_settings={"show_default": True})
@root_option
@click.option("--seed", type=int, default=defaults.DEFAULT_SEED, help="Random seed.")
@click.option("--train-trials", type=click.IntRange(min=1), default=defaults.DEFAULT_TRAIN_TRIALS,
              help="Recordings in trials_to_train.txt (the real set has 98).")  # fmt: skip
@click.option("--test-trials", type=click.IntRange(min=1), default=defaults.DEFAULT_TEST_TRIALS,
              help="Recordings in trials_to_test.txt (the real set has 24).")  # fmt: skip
@click.option(
    "--events-per-sample", type=click.IntRange(min=1), default=defaults.DEFAULT_EVENTS_PER_SAMPLE,
    help="Mean events per labelled window (the real set averages ~360,000).",
)  # fmt: skip
def synth(root: Path, train_trials: int, test_trials: int, **options: int) -> None:
    """Write ROOT/extract/DvsGesture/ with 12 labelled gestures per recording, 11 classes."""
    folder = defaults.write_synthetic_dataset(
        root, train_trials=train_trials, test_trials=test_trials, **options
    )
    size = sum(p.stat().st_size for p in folder.glob("*.aedat"))
    click.echo(
        f"wrote {folder}: {train_trials} train + {test_trials} test recordings, "
        f"{12 * (train_trials + test_trials)} samples, {size / 1e6:.1f} MB of .aedat; "
        "next: dvsgkit events"
    )
