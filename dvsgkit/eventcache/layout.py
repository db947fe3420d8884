"""The layout of the event cache ROOT/events.h5, named once (docs/formats.md describes it): what
its writer, its reader and the integrity checks agree on."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

LAYOUT = "dvsgkit.events"
# 3: Fletcher-32 on every dataset, seals, `trial` fixed-length ASCII (2: x, y as uint8, sources
# with sha256; 1: x, y uint16, md5)
LAYOUT_VERSION = 3
CACHE_NAME = "events.h5"
FIELDS = ("t", "x", "y", "p")  # each split's event columns, [E] each
SAMPLE_DATASETS = ("offsets", "labels", "trial", "row")  # each split's per-sample datasets
# What the cache stores: x and y fit uint8 on the 128 x 128 sensor (the build refuses events off
# it), which halves them and spares a filter; EventCache.sample returns EVENT_DTYPE all the same.
STORED_DTYPES = {"t": np.dtype(np.int64), "x": np.dtype(np.uint8), "y": np.dtype(np.uint8),
                 "p": np.dtype(np.uint8)}  # fmt: skip


def event_cache_path(root: str | os.PathLike[str]) -> Path:
    """ROOT/events.h5."""
    return Path(root) / CACHE_NAME
