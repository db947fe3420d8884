"""A training run's directory: its files, where a new or resumed run starts, its lock, each
epoch's writes. What a checkpoint holds is `dvsgkit.run.checkpoint`'s. It imports no torch.

```
RUN_DIR/
  config.json              the run's TrainConfig (dvsgkit.config)
  metrics.jsonl            one JSON record per epoch
  checkpoint_latest.pth    written every epoch (dvsgkit.run.checkpoint)
  checkpoint_max.pth       written on a new best test accuracy, and by the first epoch
  frames.json              the frame stores the run trained on, each from its first epoch
  tensorboard/             the same scalars, when tensorboard is installed
  curves.png               `dvsgkit plot`'s figure (dvsgkit.plots)
  train.lock               there while a process trains here
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dvsgkit.config import RECIPE_FIELDS, TrainConfig
from dvsgkit.constants import SPLITS
from dvsgkit.errors import InputError, InTheWay, NotFound, storage_errors
from dvsgkit.frames import FrameSpec
from dvsgkit.fs import require_free, sweep, write_bytes, write_text
from dvsgkit.fs.lock import build_lock

CONFIG = "config.json"
METRICS = "metrics.jsonl"
LATEST = "checkpoint_latest.pth"
BEST = "checkpoint_max.pth"
FRAMES_RECORD = "frames.json"
TENSORBOARD = "tensorboard"
CURVES_PNG = "curves.png"
RUN_LOCK = "train.lock"
SCALARS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")  # TensorBoard's, per epoch


def checkpoint_file(path: Path) -> Path:
    """The .pth file that a checkpoint argument PATH means (a run directory means its latest)."""
    path = Path(path)
    return path / LATEST if path.is_dir() else path


def recorded_root(root: str, source: Path) -> Path:
    """The dataset root that checkpoint `source` records, for a command given no `--root`;
    NotFound when it is not a folder from here (a relative root recorded elsewhere, say)."""
    path = Path(root)
    if not path.is_dir():
        raise NotFound(
            f"{path}, the dataset root recorded in {source}, is not a folder here (in "
            f"{Path.cwd()}); pass --root"
        )
    return path


# ----------------------------------------------------------------------------- starting a run


def prepare_run(
    config: TrainConfig, resume: Path | None = None, ckpt: Mapping | None = None
) -> Run:
    """The run `config` trains: a new one, or the one whose checkpoint `resume` is (`ckpt`, as
    `load_resumable` checked it), in that checkpoint's folder. Refuses, before anything is
    written, to start over a run, to resume another recipe, or with no epoch left to train."""
    if resume is None:
        run_dir = config.run_dir()
        if (run_dir / LATEST).exists():
            raise InTheWay(
                f"{run_dir} already holds a run ({_progress(run_dir)}); continue it with "
                f"--resume {run_dir / LATEST} (and a larger --epochs to extend it), or choose "
                "another --out-dir"
            )
        if (run_dir / CONFIG).exists():  # a start that crashed before its first epoch
            diff = TrainConfig.load_json(run_dir / CONFIG).recipe_differences(config)
            if diff:
                raise InTheWay(
                    f"{run_dir} holds a different run ({_describe(diff)}); choose another --out-dir"
                )
        return Run(run_dir, resumed=False)
    diff = TrainConfig.from_dict(ckpt["config"]).recipe_differences(config)
    if diff:
        raise InputError(
            f"cannot resume {resume}: it was trained with {_describe(diff)}; pass the same "
            f"options (only {', '.join(resumable_options())} may change)"
        )
    done = ckpt["epoch"] + 1
    if done >= config.epochs:
        raise InputError(
            f"{resume} has already trained {done} epochs; pass --epochs larger than {done} to "
            "extend it"
        )
    return Run(checkpoint_file(resume).parent, resumed=True)


def resumable_options() -> list[str]:
    """The `dvsgkit train` options a resume may change: the fields outside the recipe."""
    spelled = {"compile_steps": "--compile", "root": "--root"}
    return [
        spelled.get(f.name, "--" + f.name.replace("_", "-"))
        for f in dataclasses.fields(TrainConfig)
        if f.name not in RECIPE_FIELDS
    ]


def _describe(diff: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k}={old!r} (now {new!r})" for k, (old, new) in diff.items())


def _progress(run_dir: Path) -> str:
    """'finished: epochs 0..k of N done', for messages about an existing run."""
    try:
        done = read_metrics(run_dir)
        planned = TrainConfig.load_json(run_dir / CONFIG).epochs
    except (OSError, ValueError):
        return "its metrics are unreadable"
    if not done:
        return "no epoch recorded"
    last = done[-1]["epoch"]
    return (
        f"{'finished' if last + 1 >= planned else 'unfinished'}: epochs 0..{last} of {planned} done"
    )


def run_lock(run_dir: Path) -> contextlib.AbstractContextManager:
    """run_dir's lock, held while training there: a second process that would train in it (a
    recipe started twice, a run resumed twice) is refused at once, naming the holder."""
    return build_lock(run_dir / RUN_LOCK, timeout=0, what=f"the run in {run_dir}", doing="training")


def _stamp(run_dir: Path) -> tuple[int, int] | None:  # the latest checkpoint's mtime and size
    try:
        st = (run_dir / LATEST).stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


class Run(contextlib.ExitStack):
    """A run directory. Every process prepares it (`prepare_run`); the main one alone opens it
    and writes its epochs. Closing it (an ExitStack) closes TensorBoard's writer, then the lock."""

    def __init__(self, path: Path, resumed: bool) -> None:
        super().__init__()
        self.path, self.resumed = Path(path), resumed
        self.stamp = _stamp(self.path)  # what this run starts from, compared under the lock
        self.tensorboard: Any = None

    def _fix(self, remedy: str = "{remedy}") -> str:
        """After a failed write (a full disk, a read-only mount): the checkpoint to resume from."""
        latest = self.path / LATEST
        if latest.is_file():
            return f"{latest} is intact: {remedy}, then rerun with --resume {latest}"
        return f"no epoch was saved: {remedy}, or choose another --out-dir"

    def open(self, config: TrainConfig, first_epoch: int, frames: Mapping[str, Any]) -> list[str]:
        """Take the directory once every process has passed its checks: its lock, config.json,
        frames.json (`frames`: the store's provenance), metrics.jsonl cut back to the epochs
        before `first_epoch`, TensorBoard's writer. Refuses a run that another process trained
        here while this one was being prepared. Returns notes to print."""
        with storage_errors(None, "write", self._fix()):
            self.path.mkdir(parents=True, exist_ok=True)
            self.enter_context(run_lock(self.path))
            if _stamp(self.path) != self.stamp:
                if not self.resumed:
                    prepare_run(config)  # raises: the directory holds a run now
                raise InputError(
                    f"another process trained in {self.path} while this run was starting "
                    f"({_progress(self.path)}); resume from there with --resume "
                    f"{self.path / LATEST}"
                )
            for name in (CONFIG, METRICS, LATEST, BEST, FRAMES_RECORD):
                sweep(self.path, name)  # the writes of a killed run (`evaluate` may be at work)
            config.save_json(self.path / CONFIG)
            notes = record_frames(self.path, frames, first_epoch)
            truncate_metrics(self.path, first_epoch - 1)
            with contextlib.suppress(ImportError):  # tensorboard is optional
                from torch.utils.tensorboard import SummaryWriter

                # purge_step drops what a crashed or extended run logged after its checkpoint.
                self.tensorboard = SummaryWriter(
                    str(self.path / TENSORBOARD), purge_step=first_epoch
                )
                self.callback(self.tensorboard.close)  # flushed before the lock goes
        return notes

    def write_epoch(self, record: dict[str, Any], checkpoint: bytes, improved: bool) -> None:
        """One epoch's files: the metrics line first, then `checkpoint` (serialised) as the
        latest and, on an `improved` test accuracy or when there is none yet (evaluate and the
        demo expect one after any run), as the best. A crash in between leaves a line for an
        epoch the latest checkpoint lacks, which a resume drops and trains again; the other
        order would lose that epoch's line for good. A disk without room for the checkpoint
        gets nothing of the epoch."""
        best = improved or not (self.path / BEST).exists()
        line = json.dumps(record) + "\n"
        with storage_errors(None, "write", self._fix()):
            need = len(checkpoint) + len(line)
            require_free(self.path, need, self.path / LATEST, self._fix("free some space"))
            append_line(self.path / METRICS, line)
            for name in (BEST, LATEST) if best else (LATEST,):
                write_bytes(self.path / name, checkpoint, sync=True)
            if self.tensorboard is not None:
                for key in SCALARS:
                    self.tensorboard.add_scalar(key, record[key], record["epoch"])
                self.tensorboard.flush()


# ----------------------------------------------------------------------------- metrics.jsonl


def read_metrics(run_dir: Path, required: Sequence[str] = ("epoch",)) -> list[dict[str, Any]]:
    """A run's per-epoch records, each with a number for every key in `required` ("epoch" an
    integer >= 0). Text after the last newline is a line cut short by a crash: ignored. Any
    other bad line is an InputError naming the file, the line and what is wrong."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise NotFound(f"{path} not found; is {run_dir} a dvsgkit run directory?")
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]  # every record is written with its newline
    lines = enumerate(complete.split(b"\n")[:-1], 1)
    return [_check_record(line, required, f"{path}:{n}") for n, line in lines if line.strip()]


def _check_record(line: bytes, required: Sequence[str], where: str) -> dict[str, Any]:
    fix = "fix or delete that line"
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{where} is not JSON ({exc}); {fix}") from exc
    if not isinstance(record, dict):
        raise InputError(f"{where} is a JSON {type(record).__name__}, not a record; {fix}")
    for key in required:
        if key not in record:
            raise InputError(f"{where} has no {key!r}; {fix}")
        value = record[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise InputError(f"{where}: {key!r} is {value!r}, not a number; {fix}")
    epoch = record.get("epoch", 0)
    if "epoch" in required and not (isinstance(epoch, int) and epoch >= 0):
        raise InputError(f"{where}: 'epoch' is {epoch!r}, not an integer >= 0; {fix}")
    return record


def append_line(path: Path, line: str) -> None:
    """Append one line; when the write fails (a full disk) cut the file back to where it was."""
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
    except OSError as exc:
        if path.exists() and path.stat().st_size > size:
            os.truncate(path, size)
        exc.filename = exc.filename or str(path)
        raise


def truncate_metrics(run_dir: Path, last_epoch: int) -> None:
    """Drop the records after `last_epoch` (the epochs a resume trains again) and a line cut
    short, so that metrics.jsonl stays one line per epoch."""
    if (run_dir / METRICS).is_file():
        keep = [m for m in read_metrics(run_dir) if m["epoch"] <= last_epoch]
        write_text(run_dir / METRICS, "".join(json.dumps(m) + "\n" for m in keep))


# ----------------------------------------------------------------------------- frames.json


def check_resume_frames(
    old: Any, new: Mapping[str, Any], source: Path, allow_new_store: bool
) -> list[str]:
    """Refuse to continue the run of checkpoint `source` (frames record `old`) on frames `new`
    other than those it trained on, unless `allow_new_store`; return the notes to print. The
    build and the path are not compared: frames are a pure function of the events and the
    FrameSpec, so a store rebuilt (or moved) from the same events is the same data."""
    if not isinstance(old, dict) or not old.get("events_checksum"):
        return [
            f"warning: {source} does not record the frame store it trained on (an older "
            f"dvsgkit); continuing on {new['path']} unchecked"
        ]
    spec = {f.name: f.default for f in dataclasses.fields(FrameSpec)}  # an older record lacks
    # the options added since: they had their default values
    pairs = [("events checksum", old["events_checksum"], new["events_checksum"])]
    pairs += [(key, old.get(key, value), new.get(key, value)) for key, value in spec.items()]
    if isinstance(old.get("samples"), dict):  # an older dvsgkit's record may lack them
        pairs += [(f"{s} samples", old["samples"].get(s), new["samples"][s]) for s in SPLITS]
    diff = ", ".join(f"{label} {_short(a)} (now {_short(b)})" for label, a, b in pairs if a != b)
    if diff and not allow_new_store:
        old_path = Path(str(old.get("path", "")))
        moved = old_path != Path(new["path"])
        where = f"({old_path})" if moved else "(this store was rebuilt since)"
        allow = "--allow-new-store to continue on these"
        fix = f"pass --root {old_path.parent} to continue on the run's frames, or {allow}"
        raise InputError(
            f"cannot resume {source} on {new['path']}: the run trained on other frames {where}: "
            f"{diff}; {fix if moved else 'pass ' + allow}"
        )
    if diff:
        return [f"warning: continuing on other frames, as --allow-new-store asks: {diff}"]
    if old.get("build_id") != new["build_id"] or old.get("path") != new["path"]:
        return [
            f"note: {new['path']} is a rebuild or copy of the run's frame store "
            f"({old.get('path')}) from the same events, T, split_by and sample counts: the "
            "same frames"
        ]
    return []


def _short(value: Any) -> str:
    return f"{value[:12]}..." if isinstance(value, str) and len(value) > 16 else repr(value)


def record_frames(run_dir: Path, frames: Mapping[str, Any], first_epoch: int) -> list[str]:
    """Keep RUN_DIR/frames.json, the frame stores the run trained on, each from its first epoch;
    entries from `first_epoch` on are replaced (those epochs are trained again)."""
    path = run_dir / FRAMES_RECORD
    entries: Any = []
    notes = []
    if path.is_file():
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            notes.append(f"note: {path} was unreadable ({exc}); started it again")
        if not isinstance(entries, list):
            entries = []
            notes.append(f"note: {path} held no list; started it again")
    entries = [e for e in entries if isinstance(e, dict) and type(e.get("first_epoch")) is int]
    entries = [e for e in entries if e["first_epoch"] < first_epoch]
    if not entries or {k: v for k, v in entries[-1].items() if k != "first_epoch"} != frames:
        entries.append({"first_epoch": first_epoch, **frames})
    write_text(path, json.dumps(entries, indent=2) + "\n")
    return notes
