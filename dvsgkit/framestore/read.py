"""A frame store as found on disk: its status against the event cache a build would use, and
the checked read-only open that every reader goes through."""

from __future__ import annotations

import json
from pathlib import Path

import zarr

from dvsgkit.constants import SPLITS
from dvsgkit.errors import DamagedError, InputError, InTheWay, NotFound
from dvsgkit.framestore import check as verify
from dvsgkit.framestore.layout import LAYOUT, LAYOUT_VERSION


def store_zarr_format(path: Path) -> int | None:
    """The Zarr format of the group at `path` (3: zarr.json, 2: .zgroup), None for neither."""
    if (path / "zarr.json").is_file():
        return 3
    return 2 if (path / ".zgroup").is_file() else None


def store_status(
    path: Path,
    T: int,
    split_by: str,
    checksum: str | None,
    *,
    zarr_format: int | None = None,
    samples: bool = False,
) -> tuple[str, str]:
    """(status, why): 'absent'; 'current' (complete, same inputs, structure intact); 'stale'
    (ours, but incomplete, of an older layout or built from other inputs); 'damaged' (ours and
    complete, but files missing or other than recorded, its T or split_by edited, or with
    `samples`, a sample that does not match its checksum: why names them); 'format' (current,
    but not in the `zarr_format` asked for). FileExistsError when the path holds anything else
    (a sound store of another configuration included), which is never replaced.

    Cost: a few bytes per sample and a listing of the chunk files, no frame decoded; with
    `samples`, every sample decoded and checksummed (what `dvsgkit info --verify` does)."""
    if not path.exists():
        return "absent", ""
    for meta in (path / ".zattrs", path / ".zgroup", path / "zarr.json"):
        if meta.is_file():  # unreadable root metadata: maybe ours, maybe not; never replaced
            try:
                json.loads(meta.read_bytes())
            except (ValueError, UnicodeDecodeError) as exc:
                raise InTheWay(
                    f"{meta} is not valid JSON ({exc}); if {path} is a dvsgkit frame store, "
                    "it is damaged: delete it and rerun"
                ) from exc
    try:
        group = zarr.open_group(path, mode="r")
        attrs = dict(group.attrs)
    except Exception as exc:  # zarr raises several types for "not a group"; all mean: not ours
        raise InTheWay(
            f"{path} exists but is not a Zarr group ({type(exc).__name__}); "
            "move it away or delete it, then rerun"
        ) from exc
    if attrs.get("layout") != LAYOUT:
        raise InTheWay(
            f"{path} holds a Zarr group that is not a dvsgkit frame store; move it away or "
            "delete it, then rerun"
        )
    if attrs.get("T") != T or attrs.get("split_by") != split_by:
        recorded = f"T={attrs.get('T')}, split_by={attrs.get('split_by')!r}"
        problems = _problems(path, group, SPLITS)
        if problems:  # its record was edited: the frames themselves are not of that recipe
            return "damaged", f"it records {recorded}, but {_first(problems)}"
        raise InTheWay(
            f"{path} holds a frame store of another configuration ({recorded}), not "
            f"T={T}, split_by={split_by!r}; move it away or delete it, then rerun"
        )
    if attrs.get("complete") is not True:
        return "stale", "incomplete"
    if attrs.get("layout_version") != LAYOUT_VERSION:
        return "stale", f"layout version {attrs.get('layout_version')}"
    if attrs.get("events", {}).get("checksum") != checksum:
        return "stale", "built from another event cache"
    problems = _problems(path, group, SPLITS)
    if problems:
        return "damaged", _first(problems)
    found = store_zarr_format(path)
    if zarr_format is not None and found != zarr_format:
        return "format", f"in Zarr format {found}, not the format {zarr_format} asked for"
    if samples:
        problems = [p for split in SPLITS for p in verify.verify_samples(path, group, split)[1]]
        if problems:
            return "damaged", _first(problems)
    return "current", ""


def _first(problems: list[str]) -> str:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{problems[0]}{more}"


def _problems(path: Path, group: zarr.Group, splits: tuple[str, ...]) -> list[str]:
    """Structure problems of `splits`, metadata that does not parse included."""
    try:
        verify.check_metadata(path)
    except DamagedError as exc:
        return [str(exc).split("; ")[0]]
    problems: list[str] = []
    for split in splits:
        try:
            problems += verify.structure_problems(path, group, split)
        except Exception as exc:  # zarr's errors for metadata it cannot use: all damage here
            problems.append(f"{split} cannot be opened ({type(exc).__name__}: {exc})")
    return problems


def open_frame_store(path: Path, split: str | None = None) -> zarr.Group:
    """Open a complete frame store read-only (the root group, or one split's group), after
    checking its structure against its own record (arrays, shapes, dtypes, labels, every chunk
    file present; no frame is decoded). Errors name the path, the part and what to do:
    DamagedError for a store that does not match its record."""
    path = Path(path)
    if not path.exists():
        raise NotFound(f"{path} not found; build it with 'dvsgkit frames -T <T>'")
    if split is not None and split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    verify.check_metadata(path)
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as exc:  # several zarr error types mean "not a group here"
        raise InputError(f"{path} is not a Zarr group ({type(exc).__name__}: {exc})") from exc
    attrs = dict(group.attrs)
    if attrs.get("layout") != LAYOUT:
        raise InputError(
            f"{path} is not a dvsgkit frame store (layout attr {attrs.get('layout')!r})"
        )
    if attrs.get("complete") is not True:
        raise InputError(f"{path} is incomplete (an interrupted build?); rerun 'dvsgkit frames'")
    if attrs.get("layout_version") != LAYOUT_VERSION:
        raise InputError(
            f"{path} has frame layout_version {attrs.get('layout_version')}, this dvsgkit reads "
            f"{LAYOUT_VERSION}; {verify.rebuild_hint(path, attrs)}"
        )
    problems = _problems(path, group, SPLITS if split is None else (split,))
    if problems:
        raise DamagedError(verify.damaged(path, problems, attrs))
    return group if split is None else group[split]
