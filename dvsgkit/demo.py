"""The demo: synthetic recordings -> events.h5 -> frames -> a short CPU training run that learns."""

from __future__ import annotations

import shlex
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from dvsgkit.config import TrainConfig
from dvsgkit.errors import InTheWay

# Sized for a 2-core CPU: ~2 minutes end to end, ~94 % test accuracy (chance: 1/11 = 9 %).
DEMO_CONFIG = {"T": 8, "batch_size": 8, "epochs": 12, "workers": 0, "channels": 16, "opt": "adam",
               "lr": 1e-2, "lr_scheduler": "cosalr", "T_max": 12, "device": "cpu"}  # fmt: skip
DEMO_DATA = {"train_trials": 20, "test_trials": 8, "events_per_sample": 20_000, "seed": 0}
DEMO_ROOT = Path("data/demo")
DEMO_OUT_DIR = Path("runs/demo")


@dataclass(frozen=True)
class DemoResult:
    run_dir: Path
    max_test_acc: float
    final_test_acc: float
    best_checkpoint: Path
    curves: Path
    confusion: Path
    seconds: float
    root: Path  # the synthetic dataset's root
    T: int  # frames per sample of the trained network
    test_recording: tuple[Path, Path]  # (.aedat, labels CSV) of the first test recording

    def next_commands(self) -> list[str]:
        """Commands to try next on the demo's outputs, with its root and paths (quoted for a
        POSIX shell, so that they work when pasted)."""
        best, root = shlex.quote(str(self.best_checkpoint)), shlex.quote(str(self.root))
        aedat, labels = (shlex.quote(str(p)) for p in self.test_recording)
        return [
            f"dvsgkit evaluate {best} --root {root}",
            f"dvsgkit show --root {root} --split test --index 0 -T {self.T}",
            f"dvsgkit predict {best} {aedat} --labels {labels}",
        ]


def run_demo(
    root: Path = DEMO_ROOT,
    out_dir: Path = DEMO_OUT_DIR,
    *,
    epochs: int | None = None,
    train_trials: int = DEMO_DATA["train_trials"],
    test_trials: int = DEMO_DATA["test_trials"],
    seed: int = DEMO_DATA["seed"],
    progress: bool = True,
    log: bool = True,
) -> DemoResult:
    """Write a synthetic dataset under ROOT, cut and integrate it, train DEMO_CONFIG on the CPU,
    then plot the curves and evaluate the best checkpoint. A previous demo run in OUT_DIR (its
    config.json equals this one's) is replaced; any other run there is left alone."""
    from dvsgkit.evaluate import evaluate, write_outputs
    from dvsgkit.eventcache.build import build_event_cache
    from dvsgkit.framestore.build import build_frame_store
    from dvsgkit.plots import plot_run
    from dvsgkit.run import BEST, CONFIG
    from dvsgkit.samples import dataset_dir, list_recordings
    from dvsgkit.synth import write_synthetic_dataset
    from dvsgkit.train import train

    def say(message: str) -> None:
        if log:
            print(message, flush=True)

    begin = time.perf_counter()
    root, out_dir = Path(root), Path(out_dir)
    config = TrainConfig(root=str(root), out_dir=str(out_dir), progress=progress, **DEMO_CONFIG)
    if epochs is not None:
        config = replace(config, epochs=epochs, T_max=epochs)
    run_dir = config.run_dir()
    if run_dir.exists():
        if not _is_same_run(run_dir / CONFIG, config):
            raise InTheWay(
                f"{run_dir} exists and is not a previous demo run; pass another --out-dir"
            )
        shutil.rmtree(run_dir)  # the demo's own previous output: the demo always trains anew

    say(f"[1/4] synthetic recordings -> {root / 'extract'}")
    events = DEMO_DATA["events_per_sample"]
    write_synthetic_dataset(root, seed=seed, train_trials=train_trials, test_trials=test_trials,
                            events_per_sample=events)  # fmt: skip
    say(f"[2/4] events -> {root / 'events.h5'}")
    build_event_cache(root, progress=progress)
    say(f"[3/4] frames (T={config.T}) -> {root}")
    build_frame_store(root, config.frame_spec, progress=progress)
    say(f"[4/4] training {config.epochs} epochs on the CPU (channels {config.channels})")
    result = train(config)

    curves = plot_run(result.run_dir)
    evaluation = evaluate(result.run_dir / BEST, root=root, progress=False)
    confusion = write_outputs(evaluation, result.run_dir)["png"]
    test = list_recordings(dataset_dir(root), "test")[0]
    return DemoResult(
        run_dir=result.run_dir,
        max_test_acc=result.max_test_acc,
        final_test_acc=result.last["test_acc"],
        best_checkpoint=result.run_dir / BEST,
        curves=curves,
        confusion=confusion,
        seconds=time.perf_counter() - begin,
        root=root,
        T=config.T,
        test_recording=(test.aedat, test.labels),
    )


def _is_same_run(config_json: Path, config: TrainConfig) -> bool:
    """Whether config_json records `config` (so the folder is the demo's own output); the
    progress flag is display only, so a rerun with --no-progress still replaces its own run."""
    try:
        recorded = TrainConfig.load_json(config_json)
    except (OSError, ValueError):
        return False
    return replace(recorded, progress=config.progress) == config
