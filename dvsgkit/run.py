"""What a run holds and may continue from: checkpoint contents, the frame store it trained on,
and failed writes into its directory, each checked with an error that names the file."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dvsgkit.config import TrainConfig
from dvsgkit.constants import SPLITS
from dvsgkit.io.atomic import write_text_atomic

FRAMES_RECORD = "frames.json"  # the frame stores a run trained on, by first epoch
# Provenance fields that say which samples and frames a run sees (with the per-split sample
# counts). The store's build_id and path are recorded but not compared: frames are a pure function
# of the events, T and split_by, so a store rebuilt (or moved) from the same events is the same.
COMPARED = {"events_checksum": "events checksum", "T": "T", "split_by": "split_by"}


# ----------------------------------------------------------------------------- checkpoints


def _bad(path: Path, what: str) -> ValueError:
    return ValueError(
        f"{path} is not a valid dvsgkit checkpoint: {what}; use another checkpoint of the run "
        "(checkpoint_max.pth, a backup)"
    )


def _kind(value: Any) -> str:
    return type(value).__name__


def check_checkpoint(ckpt: Mapping[str, Any], path: Path, *, resume: bool) -> TrainConfig:
    """The recipe of a dvsgkit checkpoint, after checking that it holds what evaluating (or, with
    `resume`, continuing) needs in the types dvsgkit writes. ValueError names the file and the
    first problem: a damaged or edited file fails here, not with a traceback halfway through."""
    needed = {"net": dict, "epoch": int, "max_test_acc": (int, float), "config": dict}
    if resume:
        needed |= {"optimizer": dict, "lr_scheduler": dict, "scaler": dict}
    for key, kind in needed.items():
        if key not in ckpt:
            raise _bad(path, f"missing key {key!r}")
        value = ckpt[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _bad(path, f"{key!r} is a {_kind(value)}")
    if ckpt["epoch"] < 0:
        raise _bad(path, f"'epoch' is {ckpt['epoch']}, expected >= 0")
    if not 0 <= ckpt["max_test_acc"] <= 1:  # also refuses NaN
        raise _bad(path, f"'max_test_acc' is {ckpt['max_test_acc']}, expected 0..1")
    for key, value in ckpt["net"].items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise _bad(path, f"'net' maps {key!r} to a {_kind(value)}, expected a tensor")
    rng = ckpt.get("rng", [])
    if not isinstance(rng, list) or not all(isinstance(s, dict) for s in rng):
        raise _bad(path, f"'rng' is a {_kind(rng)}, expected a list of RNG states")
    try:
        return TrainConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as exc:
        raise _bad(path, f"its 'config' is invalid ({exc})") from exc


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def load_weights(net: nn.Module, state: Mapping[str, Any], path: Path) -> None:
    """`net.load_state_dict(state)`, after checking names and shapes: ValueError with one line
    naming the file and the first tensor that does not fit (torch's message spans many)."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [
            f"{label} {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise ValueError(f"{path}: weights do not fit this network: {'; '.join(parts)}")
    for key, want in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor):
            raise ValueError(f"{path}: weights do not fit: {key} is a {_kind(got)}")
        if got.shape != want.shape:
            raise ValueError(
                f"{path}: weights do not fit: {key} has shape {_shape(got)}, expected "
                f"{_shape(want)}"
            )
    net.load_state_dict(state)


def load_state(part: Any, state: Any, key: str, path: Path) -> None:
    """`part.load_state_dict(state)` for an optimizer, scheduler or scaler; an edited or foreign
    state becomes a ValueError naming the file and the part, not torch's traceback."""
    try:
        part.load_state_dict(state)
    # What torch's load_state_dict raises on an edited state depends on where it first trips.
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else _kind(exc)
        raise ValueError(
            f"{path}: its {key!r} state does not fit this run ({_kind(exc)}: {first}); use "
            "another checkpoint of the run"
        ) from exc
    if isinstance(part, torch.optim.Optimizer):  # torch loads any shapes; step() would fail
        for group in part.param_groups:
            for param in group["params"]:
                for name, value in part.state.get(param, {}).items():
                    tensor = isinstance(value, torch.Tensor) and value.dim() > 0
                    if tensor and value.shape != param.shape:
                        raise ValueError(
                            f"{path}: its {key!r} state does not fit this run: {name} has shape "
                            f"{_shape(value)} for a parameter of shape {_shape(param)}"
                        )


# ----------------------------------------------------------------------------- frame provenance


def frames_provenance(store: Path, attrs: Mapping[str, Any], samples: Mapping[str, int]) -> dict:
    """What identifies the frames a run trains on, in plain types (JSON, weights_only)."""
    events = attrs.get("events")
    return {
        "path": str(store),
        "build_id": attrs.get("build_id", ""),
        "events_checksum": events.get("checksum", "") if isinstance(events, dict) else "",
        "T": attrs.get("T"),
        "split_by": attrs.get("split_by"),
        "samples": {split: int(samples[split]) for split in SPLITS},
    }


def _short(value: Any) -> str:
    return f"{value[:12]}..." if isinstance(value, str) and len(value) > 16 else repr(value)


def frames_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What makes `new` other data than `old`: 'train samples 24 (now 96)', ... Fields that
    `old` lacks (an older dvsgkit's checkpoint) are not compared."""
    out = [
        f"{label} {_short(old[key])} (now {_short(new.get(key))})"
        for key, label in COMPARED.items()
        if key in old and old[key] != new.get(key)
    ]
    if isinstance(old.get("samples"), dict):
        for split in SPLITS:
            was, now = old["samples"].get(split), new["samples"].get(split)
            if was != now:
                out.append(f"{split} samples {was} (now {now})")
    return out


def check_resume_frames(
    old: Any, new: Mapping[str, Any], source: Path, allow_new_store: bool
) -> list[str]:
    """Refuse (ValueError, one line) to continue the run of checkpoint `source` on frames other
    than those it trained on, unless `allow_new_store`; return the notes to print."""
    if not isinstance(old, dict) or not old.get("events_checksum"):
        return [
            f"warning: {source} does not record the frame store it trained on (an older "
            f"dvsgkit); continuing on {new['path']} unchecked"
        ]
    diff = frames_differences(old, new)
    if diff and not allow_new_store:
        old_path = Path(str(old.get("path", "")))
        moved = old_path != Path(new["path"])
        where = f"({old_path})" if moved else "(this store was rebuilt since)"
        allow = "--allow-new-store to continue on these"
        fix = f"pass {allow}"
        if moved:
            fix = f"pass --root {old_path.parent} to continue on the run's frames, or {allow}"
        raise ValueError(
            f"cannot resume {source} on {new['path']}: the run trained on other frames "
            f"{where}: {', '.join(diff)}; {fix}"
        )
    if diff:
        return [
            f"warning: continuing on other frames, as --allow-new-store asks: {', '.join(diff)}"
        ]
    if old.get("build_id") != new["build_id"] or old.get("path") != new["path"]:
        return [
            f"note: {new['path']} is a rebuild or copy of the run's frame store "
            f"({old.get('path')}) from the same events, T, split_by and sample counts: the "
            "same frames"
        ]
    return []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def record_frames(run_dir: Path, provenance: Mapping[str, Any], first_epoch: int) -> str | None:
    """Keep RUN_DIR/frames.json: the frame stores the run trained on, each from its first epoch
    (a list, as a run may continue on a rebuilt store). Entries from `first_epoch` on are replaced
    (those epochs are trained again). Returns a note when an unreadable record was replaced."""
    path = run_dir / FRAMES_RECORD
    entries: Any = []
    note = None
    if path.is_file():
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            entries, note = [], f"note: {path} was unreadable ({exc}); started it again"
        if not isinstance(entries, list):
            entries, note = [], f"note: {path} held no list; started it again"
    entries = [e for e in entries if isinstance(e, dict) and _is_int(e.get("first_epoch"))]
    entries = [e for e in entries if e["first_epoch"] < first_epoch]
    if not entries or {k: v for k, v in entries[-1].items() if k != "first_epoch"} != provenance:
        entries.append({"first_epoch": first_epoch, **provenance})
    write_text_atomic(path, json.dumps(entries, indent=2) + "\n")
    return note


# ----------------------------------------------------------------------------- failed writes


class RunWriteError(OSError):
    """A file of the run directory could not be written (disk full, read-only, ...). The message
    names the file, the cause and what is left; the previous checkpoint, if any, is intact."""


def append_line(path: Path, line: str) -> None:
    """Append one line; on a failed write (a full disk) cut the file back to where it was, so no
    torn line is left behind."""
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
    except OSError as exc:
        if path.exists() and path.stat().st_size > size:
            os.truncate(path, size)
        exc.filename = exc.filename or str(path)
        raise


@contextmanager
def run_writes(run_dir: Path, resume_from: Path | None) -> Iterator[None]:
    """Turn an OSError while writing into `run_dir` into a RunWriteError: one line naming the
    file and the cause, and the checkpoint to resume from (`resume_from`, when one exists)."""
    try:
        yield
    except RunWriteError:
        raise
    except OSError as exc:
        where = exc.filename or run_dir
        cause = exc.strerror or str(exc) or type(exc).__name__
        fix = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
        if resume_from is not None and resume_from.is_file():
            left = f"{resume_from} is intact: {fix}, then rerun with --resume {resume_from}"
        else:
            left = f"no epoch was saved: {fix} or choose another --out-dir"
        error = RunWriteError(f"cannot write {where}: {cause}; {left}")
        error.errno = exc.errno
        raise error from exc
