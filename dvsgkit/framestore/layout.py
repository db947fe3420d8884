"""The frame store's names: its layout tag and version, Zarr formats, and where it lives."""

from __future__ import annotations

from pathlib import Path

from dvsgkit.frames import FrameSpec

LAYOUT = "dvsgkit.frames"
# 2: per-sample crc32 checksums (`checksums` array), and every chunk written (empty samples too).
LAYOUT_VERSION = 2
# Format 2 is the default: zarr-python 2.x (still common), zarr-python 3 and tensorstore all read
# it; format 3 (zarr-python >= 3, tensorstore) is one flag away.
ZARR_FORMATS = (2, 3)
DEFAULT_ZARR_FORMAT = 2


def frame_store_path(root: Path, spec: FrameSpec) -> Path:
    """ROOT/{spec.name}.zarr: SpikingJelly's folder name plus .zarr."""
    return Path(root) / f"{spec.name}.zarr"
