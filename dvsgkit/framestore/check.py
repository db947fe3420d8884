"""The one check of a frame store, used by open, the loaders, `dvsgkit info` and the build: its
record (ours, complete, this layout), its structure against that record (cheap: on every open)
and, on request, every sample against the checksum written when it was built.

zarr reads a missing chunk as the fill value (zeros) without a word, and takes an array's shape
from its metadata file, so a deleted chunk or an edited shape would otherwise go unnoticed. Every
chunk of a dvsgkit store is written (empty samples included), so a missing one is damage.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.constants import NUM_CLASSES, SENSOR_SIZE, SPLITS
from dvsgkit.errors import DvsgkitError, InTheWay, NotFound
from dvsgkit.frames import SPLIT_BY, FrameSpec
from dvsgkit.framestore.layout import (
    ARRAYS,
    LAYOUT,
    LAYOUT_VERSION,
    METADATA_FILES,
    zarr_format_of,
)

INCOMPLETE = "incomplete (an interrupted build?)"
# Problems of the record, not damage: what an interrupted or an older build leaves.
STALE = (INCOMPLETE, "of frame layout_version")


def sample_checksum(frames: np.ndarray) -> int:
    """crc32 of one sample's counts [T, 2, H, W] in their stored dtype (C order, little-endian)."""
    a = np.ascontiguousarray(frames)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return zlib.crc32(a.view(np.uint8).ravel())


array_checksum = sample_checksum  # of a small array (labels, checksums), kept in its split's attrs


def _json_problem(file: Path) -> str | None:
    try:
        json.loads(file.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        return f"{file} is not valid JSON ({exc})"
    return None


def record(path: Path) -> dict[str, Any]:
    """The root attributes of the dvsgkit frame store at `path`. NotFound: nothing there;
    InTheWay: something else (never replaced: whose it is cannot be known)."""
    path = Path(path)
    if not path.exists():
        raise NotFound(f"{path} not found; build it with 'dvsgkit frames -T <T>'")
    for name in METADATA_FILES:
        if (path / name).is_file() and (bad := _json_problem(path / name)):
            raise InTheWay(
                f"{bad}; if {path} is a dvsgkit frame store, it is damaged: delete it and rerun"
            )
    import zarr

    try:
        attrs = dict(zarr.open_group(path, mode="r").attrs)
    except Exception as exc:  # zarr raises several types for "not a group"; all mean: not ours
        raise InTheWay(
            f"{path} exists but is not a Zarr group ({type(exc).__name__}); move it away or "
            "delete it, then rerun"
        ) from exc
    if attrs.get("layout") != LAYOUT:
        raise InTheWay(
            f"{path} holds a Zarr group that is not a dvsgkit frame store (layout attr "
            f"{attrs.get('layout')!r}); move it away or delete it, then rerun"
        )
    return attrs


def check(path: Path, split: str | None = None, *, samples: bool = False) -> list[str]:
    """What is wrong with the frame store at `path` (one split, or all), one line each; [] when
    it is sound. Checks the metadata parses, the record (complete, this layout version), each
    split's arrays, shapes, dtypes, chunk files, labels and checksums against it (a few bytes per
    sample, no frame decoded) and, with `samples`, decodes every sample and compares it with its
    checksum (what `dvsgkit info --verify` does). NotFound / InTheWay as `record`."""
    path = Path(path)
    splits = SPLITS if split is None else (split,)
    if not path.exists():
        record(path)  # NotFound
    # Every metadata file, whichever split is asked for: zarr's own errors name no file.
    folders = [path, *(path / s for s in SPLITS), *(path / s / a for s in SPLITS for a in ARRAYS)]
    files = [f / name for f in folders for name in METADATA_FILES if (f / name).is_file()]
    problems = [bad for file in files if (bad := _json_problem(file))]
    if problems:
        return problems
    attrs = record(path)
    if attrs.get("complete") is not True:
        return [INCOMPLETE]
    if attrs.get("layout_version") != LAYOUT_VERSION:
        return [f"of frame layout_version {attrs.get('layout_version')}, this dvsgkit reads "
                f"{LAYOUT_VERSION}"]  # fmt: skip
    import zarr

    group = zarr.open_group(path, mode="r")
    for s in splits:
        try:
            problems += _structure(path, group, attrs.get("T"), s)
        except Exception as exc:  # zarr's errors for metadata it cannot use: all damage here
            problems.append(f"{s} cannot be opened ({type(exc).__name__}: {exc})")
    if samples and not problems:
        for s in splits:
            frames, sums = group[s]["frames"], group[s]["checksums"][:]
            found = (sample_problem(frames, s, i, int(sums[i])) for i in range(frames.shape[0]))
            problems += [p for p in found if p is not None]
    return problems


def status(
    target: Path, spec: FrameSpec, checksum: str, zarr_format: int | None, samples: bool
) -> tuple[str, str]:
    """What a build of `spec` from the event cache with `checksum` finds at `target`: (status,
    why), status 'absent', 'current', 'stale' (incomplete, an older layout or other inputs),
    'damaged' (`check` found problems: why names them) or 'format' (not in `zarr_format`; with
    `samples`, every sample is checked). InTheWay when `target` holds anything else: a sound
    store of another configuration too."""
    if not target.exists():
        return "absent", ""
    attrs = record(target)  # InTheWay: not a dvsgkit frame store
    problems = check(target)
    wanted = spec.to_dict()
    if {key: attrs.get(key) for key in wanted} != wanted:
        recorded = ", ".join(f"{key}={attrs.get(key)!r}" for key in wanted)
        if problems:  # its record was edited: the frames themselves are not of that recipe
            return "damaged", f"damaged: it records {recorded}, but {first(problems)}"
        asked = ", ".join(f"{key}={value!r}" for key, value in wanted.items())
        raise InTheWay(
            f"{target} holds a frame store of another configuration ({recorded}), not {asked}; "
            "move it away or delete it, then rerun"
        )
    if problems and problems[0].startswith(STALE):
        return "stale", problems[0]
    if attrs.get("events", {}).get("checksum") != checksum:
        return "stale", "built from another event cache"
    if samples and not problems:
        problems = check(target, samples=True)
    if problems:
        return "damaged", summary(problems)
    if zarr_format is not None and zarr_format_of(target) != zarr_format:
        found = zarr_format_of(target)
        return "format", f"in Zarr format {found}, not the format {zarr_format} asked for"
    return "current", ""


def _files_under(folder: Path) -> set[str]:
    out = set()
    for d, _, files in os.walk(folder):
        rel = Path(d).relative_to(folder)
        out.update((rel / f).as_posix() if rel.parts else f for f in files)
    return out


def _structure(path: Path, group: Any, T: Any, split: str) -> list[str]:
    """What in `split` disagrees with the store's record: arrays missing, shapes or dtypes other
    than recorded, chunk files missing, labels or checksums other than recorded."""
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
    expected = {"frames": ((n, T, 2, H, W), rec.get("dtype")), "labels": ((n,), "uint8"),
                "checksums": ((n,), "uint32")}  # fmt: skip
    problems = [
        f"{split}/{name} is {sub[name].dtype} {list(sub[name].shape)}, the store records "
        f"{dtype} {list(shape)}"
        for name, (shape, dtype) in expected.items()
        if tuple(sub[name].shape) != shape or str(sub[name].dtype) != dtype
    ]
    if problems:
        return problems
    frames = sub["frames"]
    if frames.chunks != (1, T, 2, H, W):
        return [f"{split}/frames has chunks {list(frames.chunks)}, not one sample per chunk"]
    present = _files_under(path / split / "frames")
    for i in range(n):
        if (key := chunk_key(frames, i)) not in present:
            problems.append(f"{split} sample {i}: chunk file {split}/frames/{key} missing")
    for name in ("labels", "checksums"):
        array, key = sub[name], chunk_key(sub[name], 0)
        if n and key not in _files_under(path / split / name):
            problems.append(f"{split}/{name}: chunk file {split}/{name}/{key} missing")
            continue
        try:
            values = array[:]
        except Exception as exc:  # numcodecs/blosc raise several types for a corrupt chunk
            problems.append(f"{split}/{name}: chunk {split}/{name}/{key} cannot be decoded "
                            f"({type(exc).__name__}: {exc})")  # fmt: skip
            continue
        if array_checksum(values) != rec.get(f"{name}_crc32"):
            problems.append(f"{split}/{name} differ from the store's record ({name}_crc32)")
        elif name == "labels" and n and int(values.max()) >= NUM_CLASSES:
            problems.append(f"{split}/labels hold a class >= {NUM_CLASSES}")
    return problems


def chunk_key(array: Any, sample: int) -> str:
    """The store key (path inside the array's folder) of the chunk holding `sample`."""
    return array.metadata.encode_chunk_key((sample,) + (0,) * (len(array.shape) - 1))


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


def first(problems: list[str]) -> str:
    """'FIRST (and N more)'."""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{problems[0]}{more}"


def summary(problems: list[str]) -> str:
    """'damaged: FIRST (and N more)', or the record's problem (incomplete, an older layout)."""
    return problems[0] if problems[0].startswith(STALE) else f"damaged: {first(problems)}"


def one_line(path: Path, problems: list[str]) -> str:
    """The store, its first problem, how many more, and the fix: a DamagedError's message."""
    return f"{path} is {summary(problems)}; {rebuild_hint(path)}"


def rebuild_hint(path: Path) -> str:
    """The command that rebuilds the store at `path`, and the one that checks it. T and split_by
    are those of its name, frames_number_{T}_split_by_{split_by}.zarr (its attrs may have been
    edited); the attrs' for a store under another name."""
    head, _, split_by = path.name.removesuffix(".zarr").partition("_split_by_")
    T = head.removeprefix("frames_number_")
    if not (head.startswith("frames_number_") and T.isdigit() and split_by in SPLIT_BY):
        try:
            attrs = record(path)
        except DvsgkitError:
            attrs = {}
        T, split_by = attrs.get("T", "<T>"), attrs.get("split_by", "<number|time>")
    return (
        f"rebuild it with 'dvsgkit frames --root {path.parent} -T {T} --split-by {split_by}' "
        f"(it replaces a damaged store); 'dvsgkit info --verify {path}' checks every sample"
    )
