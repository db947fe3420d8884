"""Where a training run starts: a new run directory, or the checkpoint of a run it continues.
Everything is checked before anything is written."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dvsgkit.config import RECIPE_FIELDS, TrainConfig
from dvsgkit.errors import InputError, InTheWay
from dvsgkit.fs.lock import build_lock
from dvsgkit.run import CONFIG, LATEST, RUN_LOCK, checkpoint_file
from dvsgkit.run.checkpoint import check_checkpoint, is_dvsgkit_checkpoint, load_checkpoint
from dvsgkit.run.metrics import read_metrics


def prepare_run(config: TrainConfig, resume: Path | None) -> tuple[Path, dict[str, Any] | None]:
    """The run directory and the checkpoint to resume from (None: a fresh run). Refuses, before
    anything is written, to start over a run that exists or to resume an incompatible one."""
    if resume is None:
        run_dir = config.run_dir()
        if (run_dir / LATEST).exists():
            raise InTheWay(
                f"{run_dir} already holds a run ({_progress(run_dir)}); continue it "
                f"with --resume {run_dir / LATEST} (and a larger --epochs to extend it), or "
                "choose another --out-dir"
            )
        if (run_dir / CONFIG).exists():
            old = TrainConfig.load_json(run_dir / CONFIG)
            diff = old.recipe_differences(config)
            if diff:
                raise InTheWay(
                    f"{run_dir} holds a different run ({_describe(diff)}); choose another --out-dir"
                )
        return run_dir, None
    ckpt = load_checkpoint(resume)
    if not is_dvsgkit_checkpoint(ckpt):
        raise InputError(
            f"{resume} is not a dvsgkit training checkpoint (a SpikingJelly one?); resuming needs "
            "the optimizer, scheduler and RNG states only dvsgkit checkpoints hold"
        )
    old = check_checkpoint(ckpt, checkpoint_file(resume), resume=True)
    diff = old.recipe_differences(config)
    if diff:
        raise InputError(
            f"cannot resume {resume}: it was trained with {_describe(diff)}; pass the same "
            f"options (only {', '.join(resumable_options())} may change)"
        )
    if ckpt["epoch"] + 1 >= config.epochs:
        raise InputError(
            f"{resume} has already trained {ckpt['epoch'] + 1} epochs; pass --epochs larger "
            f"than {ckpt['epoch'] + 1} to extend it"
        )
    resume = Path(resume)
    return (resume if resume.is_dir() else resume.parent), ckpt


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold run_dir's lock while training there: a second process that would train in the same
    directory (the same recipe started twice, or a run resumed twice) is refused at once with
    LockTimeout naming the holder, instead of both writing its checkpoints and metrics. A lock
    whose holder died is taken over. run_dir must exist. Under it, `check_unchanged` refuses a
    run that another process trained in run_dir while this one was being prepared."""
    with build_lock(run_dir / RUN_LOCK, timeout=0, what=f"the run in {run_dir}", doing="training"):
        yield


def latest_stamp(run_dir: Path) -> tuple[int, int] | None:
    """(mtime in ns, size) of run_dir's latest checkpoint, or None when it has none: taken when
    a run is prepared, and compared by `check_unchanged` once the run lock is held."""
    try:
        st = (run_dir / LATEST).stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def check_unchanged(
    config: TrainConfig, run_dir: Path, stamp: tuple[int, int] | None, resumed: bool
) -> None:
    """Under run_lock: refuse, as prepare_run would, when another process has trained in run_dir
    since `stamp` was taken (it finished before this one got the lock)."""
    if latest_stamp(run_dir) == stamp:
        return
    if not resumed:
        prepare_run(config, None)  # raises: the directory holds a run now
    raise InputError(
        f"another process trained in {run_dir} while this run was starting "
        f"({_progress(run_dir)}); resume from there with --resume {run_dir / LATEST}"
    )


def _progress(run_dir: Path) -> str:
    """'epochs 0..k of N done' from metrics.jsonl, for messages about an existing run."""
    try:
        done = read_metrics(run_dir)
        planned = TrainConfig.load_json(run_dir / CONFIG).epochs
    except (OSError, ValueError):
        return "its metrics are unreadable"
    if not done:
        return "no epoch recorded"
    last = done[-1]["epoch"]
    state = "finished" if last + 1 >= planned else "unfinished"
    return f"{state}: epochs 0..{last} of {planned} done"


def resumable_options() -> list[str]:
    """The `dvsgkit train` options a resume may change: every TrainConfig field outside the
    recipe, as its option is spelled."""
    spelled = {"compile_steps": "--compile", "root": "--root"}
    return [
        spelled.get(f.name, "--" + f.name.replace("_", "-"))
        for f in dataclasses.fields(TrainConfig)
        if f.name not in RECIPE_FIELDS
    ]


def _describe(diff: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k}={old!r} (now {new!r})" for k, (old, new) in diff.items())
