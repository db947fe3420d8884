"""Integrity of a frame store: its structure checked against its own record (cheap, on every
open), and every sample against the checksum written when it was built (`dvsgkit info --verify`).

zarr reads a missing chunk as the fill value (zeros) without a word, and takes an array's shape
from its metadata file, so a deleted chunk or an edited shape would otherwise go unnoticed. Every
chunk of a dvsgkit store is written (empty samples included), so a missing one is damage.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.constants import NUM_CLASSES, SENSOR_SIZE, SPLITS
from dvsgkit.errors import DamagedError
from dvsgkit.frames import SPLIT_BY

CHECKSUM = "crc32"  # zlib.crc32 of a sample's bytes as stored: C order, little-endian
METADATA_FILES = (".zgroup", ".zattrs", ".zarray", "zarr.json")
ARRAYS = ("frames", "labels", "checksums")


def sample_checksum(frames: np.ndarray) -> int:
    """crc32 of one sample's counts [T, 2, H, W] in their stored dtype (C order, little-endian)."""
    a = np.ascontiguousarray(frames)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return zlib.crc32(a.view(np.uint8).ravel())


def array_checksum(values: np.ndarray) -> int:
    """crc32 of a small array (labels, checksums), recorded in its split's attrs."""
    return sample_checksum(values)


def check_metadata(path: Path) -> None:
    """Parse every Zarr metadata file of the store as JSON; DamagedError names the first one
    that does not parse (zarr's own error names no file)."""
    for file in _metadata_files(path):
        try:
            json.loads(file.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise DamagedError(
                f"{file} is not valid JSON ({exc}): the store's metadata is damaged; "
                f"{rebuild_hint(path)}"
            ) from exc


def _metadata_files(path: Path) -> Iterator[Path]:
    folders = [path] + [path / s for s in SPLITS] + [path / s / a for s in SPLITS for a in ARRAYS]
    for folder in folders:
        for name in METADATA_FILES:
            if (folder / name).is_file():
                yield folder / name


def rebuild_hint(path: Path, attrs: dict[str, Any] | None = None) -> str:
    """The command that rebuilds the store at `path`, and the one that checks it."""
    T, split_by = _config(path, attrs or {})
    return (
        f"rebuild it with 'dvsgkit frames --root {path.parent} -T {T} --split-by {split_by}' "
        f"(it replaces a damaged store); 'dvsgkit info --verify {path}' checks every sample"
    )


def _config(path: Path, attrs: dict[str, Any]) -> tuple[Any, Any]:
    """T and split_by of the store that `dvsgkit frames` writes at `path`: those of its name,
    frames_number_{T}_split_by_{split_by}.zarr (its attrs may have been edited); the attrs'
    for a store under another name."""
    stem = path.name.removesuffix(".zarr")
    head, _, split_by = stem.partition("_split_by_")
    T = head.removeprefix("frames_number_")
    if head.startswith("frames_number_") and T.isdigit() and split_by in SPLIT_BY:
        return int(T), split_by
    return attrs.get("T", "<T>"), attrs.get("split_by", "<number|time>")


def chunk_key(array: Any, sample: int) -> str:
    """The store key (path inside the array's folder) of the chunk holding `sample`."""
    coords = (sample,) + (0,) * (len(array.shape) - 1)
    return array.metadata.encode_chunk_key(coords)


def _files_under(folder: Path) -> set[str]:
    out = set()
    for d, _, files in os.walk(folder):
        rel = Path(d).relative_to(folder)
        out.update((rel / f).as_posix() if rel.parts else f for f in files)
    return out


def structure_problems(path: Path, group: Any, split: str) -> list[str]:
    """What in `split` of the open store `group` disagrees with the store's record: arrays
    missing, shapes or dtypes other than recorded, chunk files missing, labels or checksums
    other than recorded. Cheap: reads the labels and checksums (a few bytes per sample), lists
    the chunk files, decodes no frames. Each problem names the split and the file."""
    attrs = dict(group.attrs)
    if split not in group:
        return [f"split '{split}' missing"]
    sub = group[split]
    rec = dict(sub.attrs)
    missing = [a for a in ARRAYS if a not in sub]
    if missing:
        return [f"{split}/{a} missing" for a in missing]
    n = rec.get("num_samples")
    if not isinstance(n, int) or n < 0:
        return [f"{split} has no recorded sample count (num_samples attr)"]
    H, W = SENSOR_SIZE
    T = attrs.get("T")
    frames, labels, sums = sub["frames"], sub["labels"], sub["checksums"]
    problems = []
    expected = {
        "frames": ((n, T, 2, H, W), rec.get("dtype")),
        "labels": ((n,), "uint8"),
        "checksums": ((n,), "uint32"),
    }
    for name, array in (("frames", frames), ("labels", labels), ("checksums", sums)):
        shape, dtype = expected[name]
        if tuple(array.shape) != shape or str(array.dtype) != dtype:
            problems.append(
                f"{split}/{name} is {str(array.dtype)} {list(array.shape)}, the store records "
                f"{dtype} {list(shape)}"
            )
    if problems:
        return problems
    if frames.chunks != (1, T, 2, H, W):
        return [f"{split}/frames has chunks {list(frames.chunks)}, not one sample per chunk"]
    present = _files_under(path / split / "frames")
    for i in range(n):
        key = chunk_key(frames, i)
        if key not in present:
            problems.append(f"{split} sample {i}: chunk file {split}/frames/{key} missing")
    for name, array in (("labels", labels), ("checksums", sums)):
        key = chunk_key(array, 0)
        if n and key not in _files_under(path / split / name):
            problems.append(f"{split}/{name}: chunk file {split}/{name}/{key} missing")
            continue
        try:
            values = array[:]
        except Exception as exc:  # numcodecs/blosc raise several types for a corrupt chunk
            problems.append(
                f"{split}/{name}: chunk {split}/{name}/{key} cannot be decoded "
                f"({type(exc).__name__}: {exc})"
            )
            continue
        if array_checksum(values) != rec.get(f"{name}_crc32"):
            problems.append(f"{split}/{name} differ from the store's record ({name}_crc32)")
        elif name == "labels" and n and int(values.max()) >= NUM_CLASSES:
            problems.append(f"{split}/labels hold a class >= {NUM_CLASSES}")
    return problems


def sample_problem(
    frames: Any, split: str, i: int, expected: int, values: np.ndarray | None = None
) -> str | None:
    """None when sample `i` decodes and matches its checksum, else what is wrong, naming the
    sample and its chunk. `values`: the sample already read, if it was."""
    where = f"{split} sample {i} (chunk {split}/frames/{chunk_key(frames, i)})"
    if values is None:
        try:
            values = frames[i]
        except Exception as exc:  # numcodecs/blosc raise several types for a corrupt chunk
            return f"{where} cannot be decoded ({type(exc).__name__}: {exc})"
    actual = sample_checksum(values)
    if actual != expected:
        return f"{where} does not match its checksum (crc32 {actual:08x}, built {expected:08x})"
    return None


def verify_samples(path: Path, group: Any, split: str) -> tuple[int, list[str]]:
    """Decode every sample of `split` and compare it with its checksum: (samples checked,
    problems). Run after structure_problems found none for the split."""
    sub = group[split]
    frames, sums = sub["frames"], sub["checksums"][:]
    problems = []
    for i in range(frames.shape[0]):
        problem = sample_problem(frames, split, i, int(sums[i]))
        if problem is not None:
            problems.append(problem)
    return frames.shape[0], problems


def damaged(path: Path, problems: list[str], attrs: dict[str, Any] | None = None) -> str:
    """One line: the store, the first problem, how many more, and the fix."""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{path} is damaged: {problems[0]}{more}; {rebuild_hint(path, attrs)}"
