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
ARRAYS = ("frames", "labels", "checksums")  # each split's arrays
RAGGED_ARRAYS = (*ARRAYS, "frame_offsets")  # and a ragged split's: sample i is frames o[i]:o[i+1]
METADATA_FILES = (".zgroup", ".zattrs", ".zarray", "zarr.json")
CHECKSUM = "crc32"  # zlib.crc32 of a sample's bytes as stored: C order, little-endian


def frame_store_path(root: Path, spec: FrameSpec) -> Path:
    """ROOT/{spec.name}.zarr: SpikingJelly's folder name plus .zarr."""
    return Path(root) / f"{spec.name}.zarr"


def zarr_format_of(path: Path) -> int | None:
    """The Zarr format of the group at `path` (3: zarr.json, 2: .zgroup), None for neither."""
    if (path / "zarr.json").is_file():
        return 3
    return 2 if (path / ".zgroup").is_file() else None


def frame_axes(ragged: bool) -> list[str]:
    """What the axes of a split's `frames` array are."""
    return ["frame", "polarity", "y", "x"] if ragged else ["sample", "time", "polarity", "y", "x"]
