"""Which frames a run trained on: the provenance every checkpoint records, the check that a
resume continues on the same data, and RUN_DIR/frames.json, the history of the stores used."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dvsgkit.constants import SPLITS
from dvsgkit.errors import InputError
from dvsgkit.fs import write_text
from dvsgkit.run import FRAMES_RECORD

# Provenance fields that say which samples and frames a run sees (with the per-split sample
# counts). The store's build_id and path are recorded but not compared: frames are a pure function
# of the events, T and split_by, so a store rebuilt (or moved) from the same events is the same.
COMPARED = {"events_checksum": "events checksum", "T": "T", "split_by": "split_by"}


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
        raise InputError(
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
    write_text(path, json.dumps(entries, indent=2) + "\n")
    return note
