"""Summaries of an event cache (events.h5) or a frame store (.zarr) for `dvsgkit info`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.constants import CLASS_NAMES, NUM_CLASSES, SPLITS
from dvsgkit.errors import DamagedError, DvsgkitError, InputError, NotFound
from dvsgkit.frames import FrameSpec

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def size_on_disk(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum((Path(d) / f).stat().st_size for d, _, files in os.walk(path) for f in files)


def summarize(path: Path, verify: bool = False) -> dict[str, Any]:
    """What `path` holds: kind "events" or "frames", splits with samples per class, dtype, size
    on disk, provenance and completeness. With verify=True every byte is read and checked: a
    frame store's samples against their checksums ("verified": samples checked, "damage": one
    line per problem, each naming the sample and chunk), an event cache's chunks against their
    Fletcher-32 checksums and its values against the sensor. ValueError / FileNotFoundError
    name the path."""
    path = Path(path)
    if not path.exists():
        raise NotFound(f"{path} not found; give an events.h5 or a frames_*.zarr path")
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(8) != HDF5_SIGNATURE:
                raise InputError(f"{path} is neither an HDF5 event cache nor a Zarr frame store")
        return _summarize_events(path, verify)
    if (path / ".zgroup").is_file() or (path / "zarr.json").is_file():
        return _summarize_frames(path, verify)
    holds = _root_parts(path)
    if not holds:
        raise InputError(
            f"{path} is a folder but neither a frame store (no .zgroup or zarr.json) nor a "
            "dataset root (no download/, extract/, events.h5 or frames_*.zarr); give "
            "ROOT/events.h5, a ROOT/frames_*.zarr store or a dataset ROOT"
        )
    return {"path": str(path), "kind": "root", "complete": True, "holds": holds}


def _root_parts(root: Path) -> dict[str, dict[str, str]]:
    """What a dataset root holds, cheaply (names and sizes; nothing hashed or decoded): each
    part (its name under ROOT) with what it is and the command that inspects it."""
    from dvsgkit.constants import DATASET_DIR, DOWNLOAD_DIR, EXTRACT_DIR, RESOURCES, TRIALS_FILES
    from dvsgkit.eventcache.layout import event_cache_path
    from dvsgkit.io import extract
    from dvsgkit.io.download import PARTIAL_SUFFIX
    from dvsgkit.synth import MARKER as SYNTH_MARKER

    parts: dict[str, dict[str, str]] = {}
    download = root / DOWNLOAD_DIR
    if download.is_dir():
        present = [r.name for r in RESOURCES if (download / r.name).is_file()]
        notes = [f"{len(present)} of {len(RESOURCES)} IBM files ({', '.join(present) or 'none'})"]
        for r in RESOURCES:
            partial = download / (r.name + PARTIAL_SUFFIX)
            if partial.is_file():
                notes.append(
                    f"{r.name}: {partial.stat().st_size:,} bytes of an interrupted download"
                )
        parts[f"{DOWNLOAD_DIR}/"] = {
            "what": ", ".join(notes),
            "inspect": f"dvsgkit download --root {root} (checks the md5s, fetches the rest)",
        }
    folder = root / EXTRACT_DIR / DATASET_DIR
    if folder.is_dir():
        recordings = sum(1 for _ in folder.glob("*.aedat"))
        lists = [n for n in TRIALS_FILES.values() if (folder / n).is_file()]
        state = "both trials lists" if len(lists) == len(TRIALS_FILES) else (
            f"trials lists: {', '.join(lists) or 'none'}")  # fmt: skip
        if (folder / SYNTH_MARKER).is_file():
            origin = "synthetic (dvsgkit synth)"
        elif (root / EXTRACT_DIR / extract.MARKER).is_file():
            origin = "extracted from the archive"
        else:
            origin = "no extraction record (copied by hand, or an interrupted extraction)"
        parts[f"{EXTRACT_DIR}/{DATASET_DIR}/"] = {
            "what": f"{recordings} recordings, {state}, {origin}",
            "inspect": f"dvsgkit events --root {root} (cuts them into events.h5)",
        }
    elif (root / EXTRACT_DIR).is_dir():
        parts[f"{EXTRACT_DIR}/"] = {
            "what": f"no {DATASET_DIR}/ folder (not extracted yet)",
            "inspect": f"dvsgkit download --root {root} (extracts the archive)",
        }
    events = event_cache_path(root)
    if events.is_file():
        parts[events.name] = {
            "what": f"event cache, {_mb(events.stat().st_size)}",
            "inspect": f"dvsgkit info {events} (add --verify to read every byte)",
        }
    for store in sorted(root.glob("*.zarr")):
        spec = _store_spec(store)
        if spec is None:
            continue
        parts[store.name] = {
            "what": f"frame store, {spec.describe()}, {_mb(size_on_disk(store))}",
            "inspect": f"dvsgkit info {store} (add --verify to check every sample)",
        }
    return parts


def _store_spec(path: Path) -> FrameSpec | None:
    """The FrameSpec a dvsgkit frame store at `path` records (None: not one, or no spec)."""
    from dvsgkit.framestore.check import record

    try:
        return FrameSpec.from_dict(record(path)) if path.is_dir() else None
    except (DvsgkitError, TypeError):
        return None


def _class_counts(labels: np.ndarray) -> dict[str, int]:
    counts = np.bincount(labels.astype(np.int64), minlength=NUM_CLASSES)[:NUM_CLASSES]
    return dict(zip(CLASS_NAMES, counts.tolist(), strict=True))


def _summarize_events(path: Path, verify: bool = False) -> dict[str, Any]:
    """An event cache's summary, with the checks a frame build relies on (its seals: 4 bytes
    read per chunk); `verify` also reads every byte (EventCache.verify: Fletcher-32 of every
    chunk, value ranges) and lists what is damaged."""
    from dvsgkit.eventcache.read import EventCache, read_events_index
    from dvsgkit.eventcache.seal import fix_for

    out: dict[str, Any] = {"path": str(path), "kind": "events", "bytes": size_on_disk(path)}
    try:
        index = read_events_index(path)
        if verify:
            with EventCache(path) as cache:
                damaged = cache.verify()
            out["verified"] = sum(len(s.labels) for s in index.splits.values())
            if damaged:
                out["damage"] = damaged
                out["fix"] = fix_for(path)
                raise InputError(f"{len(damaged)} damaged part(s): {'; '.join(damaged)}; "
                                 f"{out['fix']}")  # fmt: skip
        out["splits"] = {
            split: {"samples": len(s.labels), "events": int(s.offsets[-1]),
                    "classes": _class_counts(s.labels)}
            for split, s in index.splits.items()
        }  # fmt: skip
        sources = json.loads(index.attrs.get("sources", "[]"))
        out["provenance"] = {
            "layout_version": index.attrs.get("layout_version"),
            "dvsgkit_version": index.attrs.get("dvsgkit_version"),
            "checksum": index.checksum,
            "sources": len(sources),
            "source_bytes": sum(int(s.get("bytes", 0)) for s in sources),
        }
        out["complete"] = True  # build_event_cache renames the file into place once it is whole
    except (ValueError, KeyError, OSError) as exc:
        out["complete"] = False
        out["problem"] = str(exc)
    return out


def _summarize_frames(path: Path, verify: bool = False) -> dict[str, Any]:
    """A frame store's summary, its problems as `check` finds them (with `verify`, every sample
    decoded and compared with its checksum)."""
    import zarr

    from dvsgkit.framestore import check as checks

    problems = checks.check(path)  # NotFound; InTheWay: not a dvsgkit frame store
    try:
        group = zarr.open_group(path, mode="r")
        attrs = dict(group.attrs)
    except Exception as exc:  # its root metadata does not parse: nothing to summarise
        raise DamagedError(checks.one_line(path, problems or [repr(exc)])) from exc
    out: dict[str, Any] = {
        "path": str(path),
        "kind": "frames",
        "bytes": size_on_disk(path),
        "T": attrs.get("T"),
        "split_by": attrs.get("split_by"),
        "frames": {
            key: value for key, value in attrs.items() if key in FrameSpec.__dataclass_fields__
        },
        "zarr_format": group.metadata.zarr_format,
        "splits": {},
        "provenance": {
            "layout_version": attrs.get("layout_version"),
            "dvsgkit_version": attrs.get("dvsgkit_version"),
            "events": attrs.get("events"),
            "build_id": attrs.get("build_id"),
        },
    }
    for split in SPLITS:
        try:
            frames, labels = group[split]["frames"], group[split]["labels"]
            out["splits"][split] = {
                "samples": int(labels.shape[0]),
                "shape": list(frames.shape),
                "dtype": str(frames.dtype),
                "max_count": group[split].attrs.get("max_count"),
                "bytes": size_on_disk(path / split),
                "raw_bytes": int(frames.nbytes),
                "classes": {} if problems else _class_counts(labels[:]),
            }
            if "frame_offsets" in group[split] and not problems:  # ragged: frames per sample
                lengths = np.diff(group[split]["frame_offsets"][:])
                out["splits"][split]["frames_per_sample"] = (
                    [int(lengths.min()), float(lengths.mean()), int(lengths.max())]
                    if lengths.size else [0, 0.0, 0]
                )  # fmt: skip
        except Exception:  # a split missing or unreadable: named among the problems
            continue
    if verify:
        out["verified"] = 0
        if not problems:
            problems = checks.check(path, samples=True)
            out["verified"] = sum(s["samples"] for s in out["splits"].values())
    out["complete"] = not problems
    if problems:
        out["problem"] = checks.summary(problems)
        out["damage"] = problems
        out["fix"] = checks.rebuild_hint(path)
    return out


def _describe(recorded: dict[str, Any]) -> str:
    """A store's frame options as one line (what its record says, however edited)."""
    try:
        return FrameSpec.from_dict(recorded).describe()
    except (DvsgkitError, TypeError):
        return ", ".join(f"{key} {value!r}" for key, value in recorded.items())


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def format_summary(info: dict[str, Any]) -> str:
    """The summary as aligned text lines."""
    if info["kind"] == "root":
        width = max(len(name) for name in info["holds"])
        lines = [f"{info['path']}: a dataset root; what it holds, and the command for each:"]
        for name, part in info["holds"].items():
            lines.append(f"  {name:<{width}}  {part['what']}; {part['inspect']}")
        return "\n".join(lines)
    lines = [f"{info['path']}: {'event cache' if info['kind'] == 'events' else 'frame store'}"]
    lines.append(f"  complete        {'yes' if info['complete'] else 'NO: ' + info['problem']}")
    if "verified" in info:
        verdict = f"{len(info['damage'])} problem(s)" if info.get("damage") else "all match"
        lines.append(f"  verified        {info['verified']} samples against checksums: {verdict}")
    for problem in info.get("damage", []):
        lines.append(f"  damage          {problem}")
    if info.get("fix"):
        lines.append(f"  fix             {info['fix']}")
    lines.append(f"  size on disk    {_mb(info['bytes'])}")
    if info["kind"] == "frames":
        if set(info["frames"]) <= {"T", "split_by"}:  # T frames by number or time
            lines.append(f"  T               {info['T']} (split_by {info['split_by']})")
        else:
            lines.append(f"  frames          {_describe(info['frames'])}")
        lines.append(f"  zarr format     {info['zarr_format']}")
    for split, s in info.get("splits", {}).items():
        if info["kind"] == "events":
            head = f"{s['samples']} samples, {s['events']:,} events"
        else:
            ratio = s["raw_bytes"] / max(s["bytes"], 1)
            head = (
                f"{s['samples']} samples, {s['dtype']} {s['shape']}, max count "
                f"{s['max_count']}, {_mb(s['bytes'])} ({ratio:.1f}x compressed)"
            )
        lines.append(f"  {split:<15} {head}")
        if "frames_per_sample" in s:
            low, mean, high = s["frames_per_sample"]
            lines.append(f"  {'':<15} frames per sample {low}..{high} (mean {mean:.1f})")
        per_class = ", ".join(f"{n}" for n in s["classes"].values())
        lines.append(f"  {'':<15} per class (0..10): {per_class}")
    prov = info.get("provenance", {})
    for key, value in prov.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        lines.append(f"  {key:<15} {value}")
    return "\n".join(lines)
