"""A training run's directory: the names of its files, each defined here once.

```
RUN_DIR/
  config.json              the run's TrainConfig (dvsgkit.config)
  metrics.jsonl            one JSON record per epoch (run.metrics)
  checkpoint_latest.pth    written every epoch (run.checkpoint)
  checkpoint_max.pth       written on a new best test accuracy
  frames.json              the frame stores the run trained on (run.provenance)
  tensorboard/             the same scalars, when tensorboard is installed
  curves.png               `dvsgkit plot`'s figure (dvsgkit.plots)
  train.lock               there while a process trains here (run.prepare.run_lock)
```

The modules of this package read and write them: `checkpoint` (save, load, check), `rng`
(the RNG states a checkpoint keeps), `metrics`, `provenance`, `prepare` (what a new or resumed
run starts from), `writes` (failed writes) and `divergence` (a run whose loss or weights stop
being finite is stopped before its checkpoint is written). This module imports no torch.
"""

from __future__ import annotations

from pathlib import Path

from dvsgkit.errors import NotFound

CONFIG = "config.json"
METRICS = "metrics.jsonl"
LATEST = "checkpoint_latest.pth"
BEST = "checkpoint_max.pth"
FRAMES_RECORD = "frames.json"  # the frame stores a run trained on, by first epoch
TENSORBOARD = "tensorboard"
CURVES_PNG = "curves.png"
RUN_LOCK = "train.lock"  # one training process per run directory


def checkpoint_file(path: Path) -> Path:
    """The .pth file that a checkpoint argument PATH means (a run directory means its latest)."""
    path = Path(path)
    return path / LATEST if path.is_dir() else path


def recorded_root(root: str, source: Path) -> Path:
    """The dataset root that checkpoint `source` records (its run's `--root`), for a command
    given no `--root`. FileNotFoundError names it when it is not a folder from here (a relative
    root recorded in another working directory, say)."""
    path = Path(root)
    if not path.is_dir():
        raise NotFound(
            f"{path}, the dataset root recorded in {source}, is not a folder here (in "
            f"{Path.cwd()}); pass --root"
        )
    return path
