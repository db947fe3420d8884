"""`dvsgkit synth`: write a synthetic DvsGesture-shaped dataset in the real layout."""

from __future__ import annotations

from pathlib import Path

import click

import dvsgkit.synth as synth_defaults
from dvsgkit_cli.common import root_option


@click.command("synth")
@root_option
@click.option(
    "--seed", type=int, default=synth_defaults.DEFAULT_SEED, show_default=True, help="Random seed."
)
@click.option(
    "--train-trials",
    type=click.IntRange(min=1),
    default=synth_defaults.DEFAULT_TRAIN_TRIALS,
    show_default=True,
    help="Recordings in trials_to_train.txt (the real set has 98).",
)
@click.option(
    "--test-trials",
    type=click.IntRange(min=1),
    default=synth_defaults.DEFAULT_TEST_TRIALS,
    show_default=True,
    help="Recordings in trials_to_test.txt (the real set has 24).",
)
@click.option(
    "--events-per-sample",
    type=click.IntRange(min=1),
    default=synth_defaults.DEFAULT_EVENTS_PER_SAMPLE,
    show_default=True,
    help="Mean events per labelled window (the real set averages ~360,000).",
)
def synth(
    root: Path, seed: int, train_trials: int, test_trials: int, events_per_sample: int
) -> None:
    """Write ROOT/extract/DvsGesture/ with 12 labelled gestures per recording, 11 classes."""
    from dvsgkit.synth import write_synthetic_dataset

    folder = write_synthetic_dataset(
        root,
        seed=seed,
        train_trials=train_trials,
        test_trials=test_trials,
        events_per_sample=events_per_sample,
    )
    size = sum(p.stat().st_size for p in folder.glob("*.aedat"))
    click.echo(
        f"wrote {folder}: {train_trials} train + {test_trials} test recordings, "
        f"{12 * (train_trials + test_trials)} samples, {size / 1e6:.1f} MB of .aedat; "
        "next: dvsgkit events"
    )
