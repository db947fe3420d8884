"""The checked read-only open that every reader of a frame store goes through."""

from __future__ import annotations

from pathlib import Path

import zarr

from dvsgkit.constants import SPLITS
from dvsgkit.errors import DamagedError, InputError
from dvsgkit.framestore.check import check, one_line


def open_frame_store(path: Path, split: str | None = None) -> zarr.Group:
    """Open a complete frame store read-only (the root group, or one split's group) once `check`
    finds nothing wrong with it (or with that split): no frame is decoded. NotFound, InTheWay
    (not a dvsgkit frame store) or DamagedError, one line naming the path, the part and the fix."""
    path = Path(path)
    if split is not None and split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    problems = check(path, split)
    if problems:
        raise DamagedError(one_line(path, problems))
    group = zarr.open_group(path, mode="r")
    return group if split is None else group[split]
