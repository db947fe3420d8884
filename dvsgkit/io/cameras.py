"""Today's event-camera files, through faery (the optional extra `dvsgkit[cameras]`): AEDAT 4
(iniVation DV), EVT 2 / 3 `.raw` and `.dat` (Prophesee), `.es`: which files they are, and a
writer for tests and pictures (`dvsgkit.io.recordings` reads them)."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import numpy as np

from dvsgkit.errors import InputError
from dvsgkit.fs import atomic_file

CAMERA_SUFFIXES = (".aedat4", ".raw", ".evt", ".dat", ".es")
AEDAT4_MAGIC = b"#!AER-DAT4.0"  # DV writes .aedat4; a .aedat that starts so is one too
EXTRA = "pip install 'dvsgkit[cameras]'"


def is_camera_file(path: Path) -> bool:
    """Whether `path` is read through faery: a camera suffix, or a .aedat holding AEDAT 4."""
    suffix = path.suffix.lower()
    if suffix == ".aedat" and path.is_file():
        with open(path, "rb") as f:
            return f.read(len(AEDAT4_MAGIC)) == AEDAT4_MAGIC
    return suffix in CAMERA_SUFFIXES


def faery_module(path: object) -> ModuleType:
    """faery, or an InputError naming `path` and the extra that installs it."""
    try:
        import faery
    except ImportError:
        raise InputError(
            f"{path}: reading AEDAT 4, EVT (.raw), .dat and .es recordings needs the optional "
            f"package faery: {EXTRA}"
        ) from None
    return faery


def write_camera(
    path: str | os.PathLike[str],
    events: np.ndarray,
    sensor: tuple[int, int],
    version: str | None = None,
) -> Path:
    """Write EVENT_DTYPE `events` (in time order, on a (width, height) sensor) as the camera file
    its suffix names (`version`: "evt2" or "evt3" for .raw, faery's default evt3), under a
    temporary name first. Tests, benchmarks and the docs' pictures use it: no camera needed."""
    path = Path(path)
    faery = faery_module(path)
    array = np.zeros(len(events), faery.EVENTS_DTYPE)
    for name in ("t", "x", "y"):
        array[name] = events[name]
    array["on"] = events["p"] > 0
    kind = faery.enums.events_file_type_guess(Path(path.name))  # by suffix: there is no file yet
    with atomic_file(path) as tmp:
        faery.events_stream_from_array(array, tuple(sensor)).to_file(
            tmp, file_type=kind, version=version
        )
    return path
