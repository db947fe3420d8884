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
from pathlib import Path
from typing import Any

from dvsgkit.constants import NUM_CLASSES, SPLITS
from dvsgkit.errors import DvsgkitError, InputError, InTheWay, NotFound
from dvsgkit.frames import SPLIT_BY, FrameSpec, frame_size
from dvsgkit.framestore.chunks import (
    RAGGED_CHUNK_FRAMES,
    SplitFrames,
    chunk_key,
    sample_checksum,
)
from dvsgkit.framestore.custom import build_call
from dvsgkit.framestore.layout import (
    LAYOUT,
    LAYOUT_VERSION,
    METADATA_FILES,
    RAGGED_ARRAYS,
    zarr_format_of,
)

INCOMPLETE = "incomplete (an interrupted build?)"
# Problems of the record, not damage: what an interrupted or an older build leaves.
STALE = (INCOMPLETE, "of frame layout_version")


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
    return dict(_root_group(path).attrs)


def _root_group(path: Path) -> Any:
    """The root group of the dvsgkit frame store at `path`, read-only (NotFound, InTheWay as
    `record`)."""
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
        group = zarr.open_group(path, mode="r")
    except Exception as exc:  # zarr raises several types for "not a group"; all mean: not ours
        raise InTheWay(
            f"{path} exists but is not a Zarr group ({type(exc).__name__}); move it away or "
            "delete it, then rerun"
        ) from exc
    if (layout := group.attrs.get("layout")) != LAYOUT:
        raise InTheWay(
            f"{path} holds a Zarr group that is not a dvsgkit frame store (layout attr "
            f"{layout!r}); move it away or delete it, then rerun"
        )
    return group


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
    folders = [path, *(path / s for s in SPLITS)]
    folders += [path / s / a for s in SPLITS for a in RAGGED_ARRAYS]
    files = [f / name for f in folders for name in METADATA_FILES if (f / name).is_file()]
    problems = [bad for file in files if (bad := _json_problem(file))]
    if problems:
        return problems
    group = _root_group(path)
    attrs = dict(group.attrs)
    if attrs.get("complete") is not True:
        return [INCOMPLETE]
    if attrs.get("layout_version") != LAYOUT_VERSION:
        return [f"of frame layout_version {attrs.get('layout_version')}, this dvsgkit reads "
                f"{LAYOUT_VERSION}"]  # fmt: skip
    try:
        spec = FrameSpec.from_dict(attrs)
    except (InputError, TypeError) as exc:
        return [f"its record of the frames is not a frame spec ({exc})"]
    for s in splits:
        try:
            problems += _structure(path, group, spec, s)
        except Exception as exc:  # zarr's errors for metadata it cannot use: all damage here
            problems.append(f"{s} cannot be opened ({type(exc).__name__}: {exc})")
    if samples and not problems:
        for s in splits:
            frames, sums = SplitFrames(group[s], path / s / "frames"), group[s]["checksums"][:]
            found = (frames.problem(i, int(sums[i])) for i in range(len(frames)))
            problems += [p for p in found if p is not None]
    return problems


def status(
    target: Path,
    spec: FrameSpec,
    checksum: str,
    zarr_format: int | None,
    samples: bool,
    source: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """What a build of `spec` from the event cache with `checksum` finds at `target`: (status,
    why), status 'absent', 'current', 'stale' (incomplete, an older layout, other inputs, or
    another version of the custom integrator whose `source` provenance is given), 'damaged'
    (`check` found problems: why names them) or 'format' (not in `zarr_format`; with `samples`,
    every sample is checked). InTheWay when `target` holds anything else: a sound store of
    another configuration too."""
    if not target.exists():
        return "absent", ""
    attrs = record(target)  # InTheWay: not a dvsgkit frame store
    problems = check(target)
    wanted = spec.to_dict()
    keys = wanted.keys() | FrameSpec.from_dict({}).to_dict().keys() | _spec_keys(attrs)
    if {key: attrs.get(key) for key in keys} != {key: wanted.get(key) for key in keys}:
        recorded = ", ".join(f"{key}={attrs.get(key)!r}" for key in sorted(keys))
        if problems:  # its record was edited: the frames themselves are not of that recipe
            return "damaged", f"damaged: it records {recorded}, but {first(problems)}"
        raise InTheWay(
            f"{target} holds a frame store of another configuration ({recorded}), not "
            f"{spec.describe()}; move it away or delete it, then rerun"
        )
    if problems and problems[0].startswith(STALE):
        return "stale", problems[0]
    if attrs.get("events", {}).get("checksum") != checksum:
        return "stale", "built from another event cache"
    built = (attrs.get("integrator_source") or {}).get("source_sha256")
    if source and source.get("source_sha256") and built and built != source["source_sha256"]:
        return "stale", f"built by another version of {source['function']}"
    if samples and not problems:
        problems = check(target, samples=True)
    if problems:
        return "damaged", summary(problems)
    if zarr_format is not None and zarr_format_of(target) != zarr_format:
        found = zarr_format_of(target)
        return "format", f"in Zarr format {found}, not the format {zarr_format} asked for"
    return "current", ""


def _spec_keys(attrs: dict[str, Any]) -> set[str]:
    """The FrameSpec fields a store's attributes record."""
    return set(attrs) & set(FrameSpec().__dataclass_fields__)


def _files_under(folder: Path) -> set[str]:
    out = set()
    for d, _, files in os.walk(folder):
        rel = Path(d).relative_to(folder)
        out.update((rel / f).as_posix() if rel.parts else f for f in files)
    return out


def _structure(path: Path, group: Any, spec: FrameSpec, split: str) -> list[str]:
    """What in `split` disagrees with the store's record: arrays missing, shapes or dtypes other
    than recorded, chunk files missing, labels, checksums (or frame offsets) other than
    recorded."""
    if split not in group:
        return [f"split '{split}' missing"]
    sub = group[split]
    rec = dict(sub.attrs)
    arrays = RAGGED_ARRAYS if spec.ragged else RAGGED_ARRAYS[:-1]
    missing = [a for a in arrays if a not in sub]
    if missing:
        return [f"{split}/{a} missing" for a in missing]
    n, frames_count = rec.get("num_samples"), rec.get("num_frames") if spec.ragged else 0
    if not isinstance(n, int) or n < 0:
        return [f"{split} has no recorded sample count (num_samples attr)"]
    if not isinstance(frames_count, int) or frames_count < 0:
        return [f"{split} has no recorded frame count (num_frames attr)"]
    frame = (2, *frame_size(spec))
    sample = frame if spec.ragged else (spec.T, *frame)
    expected = {"frames": (((frames_count if spec.ragged else n), *sample), rec.get("dtype")),
                "labels": ((n,), "uint8"), "checksums": ((n,), "uint32"),
                "frame_offsets": ((n + 1,), "int64")}  # fmt: skip
    problems = [
        f"{split}/{name} is {sub[name].dtype} {list(sub[name].shape)}, the store records "
        f"{dtype} {list(shape)}"
        for name, (shape, dtype) in expected.items()
        if name in arrays and (tuple(sub[name].shape) != shape or str(sub[name].dtype) != dtype)
    ]
    if problems:
        return problems
    frames, k = sub["frames"], RAGGED_CHUNK_FRAMES if spec.ragged else 1
    if frames.chunks != (k, *sample):
        unit = f"{k} frames" if spec.ragged else "one sample"
        return [f"{split}/frames has chunks {list(frames.chunks)}, not {unit} per chunk"]
    present = _files_under(path / split / "frames")
    for i in range(0, frames.shape[0], k):  # the first sample (ragged: frame) of each chunk
        if (key := chunk_key(frames, i)) not in present:
            last = min(i + k, frames.shape[0]) - 1  # ragged: name the chunk's frames
            what = f"sample {i}" if not spec.ragged else f"frames {i} to {last}"
            problems.append(f"{split} {what}: chunk file {split}/frames/{key} missing")
    for name in arrays[1:]:
        array, key = sub[name], chunk_key(sub[name], 0)
        if array.shape[0] and key not in _files_under(path / split / name):
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
    edited); the other options are its attrs' (for a custom integrator: the Python call)."""
    head, _, split_by = path.name.removesuffix(".zarr").partition("_split_by_")
    T = head.removeprefix("frames_number_")
    options = f"-T {T} --split-by {split_by}"
    if not (head.startswith("frames_number_") and T.isdigit() and split_by in SPLIT_BY):
        try:
            spec = FrameSpec.from_dict(record(path))
            options = spec.cli_options()
        except (DvsgkitError, TypeError):
            options, spec = "-T <T> --split-by <number|time>", None
        if spec is not None and spec.mode == "custom":
            return (f"rebuild it in Python with {build_call(path, spec)}; 'dvsgkit info "
                    f"--verify {path}' checks every sample")  # fmt: skip
    return (
        f"rebuild it with 'dvsgkit frames --root {path.parent} {options}' "
        f"(it replaces a damaged store); 'dvsgkit info --verify {path}' checks every sample"
    )
