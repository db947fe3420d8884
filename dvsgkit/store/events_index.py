"""The index of an event cache (events.h5) that a frame build works from, checked against the
documented layout, and the cache's fingerprint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dvsgkit.constants import NUM_CLASSES, SPLITS
from dvsgkit.store.events import LAYOUT as EVENTS_LAYOUT
from dvsgkit.store.events import LAYOUT_VERSION as EVENTS_LAYOUT_VERSION  # the one it reads


def read_events_index(events_path: Path) -> dict[str, Any]:
    """Check events.h5 against its documented layout; return its attrs and per-split index
    (offsets, labels, sample ids). ValueError / FileNotFoundError name the path and the fix."""
    fix = f"delete {events_path} and run 'dvsgkit events' to rebuild it"
    if not events_path.is_file():
        raise FileNotFoundError(f"{events_path} not found; run 'dvsgkit events' first")
    try:
        with h5py.File(events_path, "r") as f:
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
            if attrs.get("layout") != EVENTS_LAYOUT:
                raise ValueError(f"{events_path} is not a dvsgkit event cache (no layout attr)")
            if int(attrs.get("layout_version", -1)) != EVENTS_LAYOUT_VERSION:
                raise ValueError(
                    f"{events_path} has event layout_version {attrs.get('layout_version')}, "
                    f"this dvsgkit reads {EVENTS_LAYOUT_VERSION}"
                )
            splits = {}
            for split in SPLITS:
                if split not in f:
                    raise ValueError(f"{events_path} has no '{split}' group")
                g = f[split]
                missing = [k for k in ("t", "x", "y", "p", "offsets", "labels") if k not in g]
                if missing:
                    raise ValueError(f"{events_path}:{split} lacks dataset(s) {missing}")
                offsets, labels = g["offsets"][()].astype(np.int64), g["labels"][()]
                n = labels.shape[0]
                trial = [s.decode() if isinstance(s, bytes) else str(s) for s in g["trial"][()]]
                row = g["row"][()].tolist() if "row" in g else list(range(n))
                if (
                    offsets.shape != (n + 1,)
                    or offsets[0] != 0
                    or (np.diff(offsets) < 0).any()
                    or offsets[-1] != g["x"].shape[0]
                    or any(g[k].shape[0] != g["x"].shape[0] for k in "typ")
                    or (n and int(labels.max()) >= NUM_CLASSES)
                    or len(trial) != n
                ):
                    raise ValueError(f"{events_path}:{split} has inconsistent offsets or labels")
                splits[split] = {
                    "offsets": offsets,
                    "labels": labels.astype(np.uint8),
                    "sample_ids": [f"{tr}:{r}" for tr, r in zip(trial, row, strict=True)],
                }
    except OSError as exc:  # h5py's "unable to open / truncated file"
        raise ValueError(
            f"{events_path} is not a readable HDF5 event cache ({exc}); {fix}"
        ) from exc
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{events_path} does not follow the event layout ({exc}); {fix}") from exc
    except ValueError as exc:
        if str(events_path) in str(exc) and fix not in str(exc):
            raise ValueError(f"{exc}; {fix}") from exc
        raise
    return {"attrs": attrs, "splits": splits}


def events_checksum(events_path: Path) -> str:
    """The event cache's own fingerprint (EventCache.checksum), recorded as provenance."""
    from dvsgkit.store.events import EventCache

    with EventCache(events_path) as cache:
        return cache.checksum()
