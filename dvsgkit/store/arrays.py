"""Event arrays in an HDF5 file (datasets t, x, y, p at its root), read a chunk at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from dvsgkit.recording import FIELDS, RecordingError, to_events


def iter_h5_events(path: Path, chunk_events: int) -> Iterator[np.ndarray]:
    """EVENT_DTYPE chunks of the root datasets t, x, y, p of an HDF5 file, in stored order."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:  # h5py's "unable to open / truncated file"
        raise RecordingError(f"{path}: not a readable HDF5 file ({exc})") from exc
    with f:
        missing = [name for name in FIELDS if not isinstance(f.get(name), h5py.Dataset)]
        if missing:
            raise RecordingError(
                f"{path}: no dataset(s) {', '.join(missing)} at the file's root; an event file "
                f"needs 1-D datasets t, x, y, p (found {', '.join(sorted(f)) or 'none'})"
            )
        shapes = {name: f[name].shape for name in FIELDS}
        if len({*shapes.values()}) != 1 or len(shapes["t"]) != 1:
            raise RecordingError(
                f"{path}: t, x, y, p must be 1-D datasets of one length, got {shapes}"
            )
        n = shapes["t"][0]
        for start in range(0, n, chunk_events):
            stop = min(n, start + chunk_events)
            try:
                columns = {name: f[name][start:stop] for name in FIELDS}
            except OSError as exc:  # a damaged chunk
                raise RecordingError(
                    f"{path}: events {start}..{stop - 1} cannot be read ({exc})"
                ) from exc
            yield to_events(path, columns, f", events {start}..{stop - 1}")
