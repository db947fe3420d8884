"""The four DvsGesture files in ROOT/download/: their state against the resource table
(`dvsgkit.constants.RESOURCES`), the md5 cache, the manual steps. Fetching: `dvsgkit.io.fetch`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvsgkit.constants import (
    ARCHIVE_NAME,
    ATTRIBUTION,
    DOWNLOAD_DIR,
    EXTRACT_DIR,
    IBM_BOX_URL,
    LICENSE_NAME,
    MAPPING_NAME,
    RESOURCES,
    Resource,
)
from dvsgkit.errors import storage_errors
from dvsgkit.fs import atomic_file, make_folder, write_text

VERIFY_CACHE = ".dvsgkit-md5.json"  # in ROOT/download/: name -> {size, mtime_ns, md5}
# What a fetch has received so far, kept under this fixed name so that a later run resumes it.
PARTIAL_SUFFIX = ".partial"
# 4 MiB: big enough for hashlib and disk throughput, small enough for a live progress bar.
CHUNK = 4 << 20
SPACE_FIX = "free some space, or use another --root"

VERIFIED, MISSING, CORRUPT = "verified", "missing", "corrupt"


@dataclass(frozen=True)
class FileStatus:
    """What ROOT/download/ holds for one resource."""

    resource: Resource
    path: Path  # the final name, ROOT/download/<name>
    state: str  # VERIFIED, MISSING or CORRUPT
    size: int | None = None  # bytes under the final name, None when missing
    md5: str | None = None  # actual md5 of the file under the final name
    partial_bytes: int = 0  # bytes in <name>.partial waiting to be resumed
    error: str | None = None  # why the last fetch of this file failed

    @property
    def verified(self) -> bool:
        return self.state == VERIFIED


def download_dir(root: Path) -> Path:
    return Path(root) / DOWNLOAD_DIR


def byte_bar(total: int | None, desc: str, progress: bool, initial: int = 0) -> Any:
    """A tqdm bar counting bytes (on stderr, gone when done), or a silent one."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=desc,
                disable=not progress, leave=False)  # fmt: skip


def md5_file(path: Path, *, chunk: int = CHUNK, progress: bool = False) -> str:
    """Hex md5 of a file, read in `chunk`-byte pieces (constant memory for the 3 GB archive)."""
    digest = hashlib.md5()
    name = Path(path).name.removesuffix(PARTIAL_SUFFIX)
    with (
        open(path, "rb") as f,
        byte_bar(os.fstat(f.fileno()).st_size, f"md5 {name}", progress) as bar,
    ):
        while block := f.read(chunk):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


class VerifyCache:
    """Remembers each file's md5 keyed by (size, mtime_ns), so a rerun does not rehash 3 GB.

    A file replaced or appended to changes size or mtime and is hashed again; `--rehash`
    ignores the cache for a file edited in place with its mtime restored (the extraction also
    hashes the archive as it reads it, and stops if the md5 changed)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / VERIFY_CACHE
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            self.entries = {}  # absent or damaged: everything is simply hashed again

    def md5(self, file: Path, *, rehash: bool, progress: bool) -> str:
        st = file.stat()
        entry = self.entries.get(file.name)
        if (
            not rehash
            and isinstance(entry, dict)
            and entry.get("size") == st.st_size
            and entry.get("mtime_ns") == st.st_mtime_ns
        ):
            return str(entry["md5"])
        digest = md5_file(file, progress=progress)
        self.remember(file, digest)
        return digest

    def remember(self, file: Path, digest: str) -> None:
        st = file.stat()
        self.entries[file.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": digest}
        write_text(self.path, json.dumps(self.entries, indent=1, sort_keys=True))


def check_resources(
    root: Path,
    *,
    resources: Sequence[Resource] = RESOURCES,
    rehash: bool = False,
    progress: bool = False,
) -> list[FileStatus]:
    """State of every resource in ROOT/download/: verified, missing or corrupt (md5 differs)."""
    directory = download_dir(root)
    cache = VerifyCache(directory)
    statuses = []
    for res in resources:
        path = directory / res.name
        partial = path.with_name(path.name + PARTIAL_SUFFIX)
        partial_bytes = partial.stat().st_size if partial.is_file() else 0
        if not path.is_file():
            statuses.append(FileStatus(res, path, MISSING, partial_bytes=partial_bytes))
            continue
        digest = cache.md5(path, rehash=rehash, progress=progress)
        state = VERIFIED if digest == res.md5 else CORRUPT
        statuses.append(
            FileStatus(res, path, state, path.stat().st_size, digest, partial_bytes=partial_bytes)
        )
    return statuses


def _human(n: int | None) -> str:
    """Bytes in decimal units, as IBM's README states sizes ("about 3 GB")."""
    if n is None:
        return "-"
    if n < 1000:
        return f"{n} B"
    scale, unit = next(su for su in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")) if n >= su[0])
    return f"{n / scale:.1f} {unit}"


def format_table(statuses: Sequence[FileStatus]) -> str:
    """A fixed-width table: file, state, size, expected md5, actual md5 (or the partial's size)."""
    rows = [("file", "state", "size", "expected md5", "actual md5 / note")]
    for s in statuses:
        if s.md5 is not None:
            note = "same" if s.verified else s.md5
        elif s.partial_bytes:
            note = f"{_human(s.partial_bytes)} in {s.path.name}{PARTIAL_SUFFIX}, will resume"
        else:
            note = "-"
        if s.error:
            note = f"{note}; {s.error}" if note != "-" else s.error
        rows.append((s.resource.name, s.state, _human(s.size), s.resource.md5, note))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        for r in rows
    )


def manual_steps(root: Path, statuses: Sequence[FileStatus]) -> str:
    """What a user must do by hand when no mirror is given (IBM's Box folder needs a browser)."""
    directory = download_dir(root).resolve()
    todo = [s for s in statuses if not s.verified]
    lines = [
        "IBM hosts DvsGesture in a Box folder that needs a browser, so dvsgkit cannot fetch it",
        "unattended. To finish by hand:",
        f"  1. Open {IBM_BOX_URL}",
        "  2. Download these files (keep their names):",
    ]
    for s in todo:
        size = f" (~{_human(s.resource.approx_bytes)})" if s.resource.approx_bytes else ""
        fix = "  <- present but corrupt: replace it" if s.state == CORRUPT else ""
        lines.append(f"       {s.resource.name}{size}  md5 {s.resource.md5}{fix}")
    lines += [
        f"  3. Put them in {directory}{os.sep} (create the folder if needed)",
        f"  4. Run: dvsgkit download --root {Path(root)}",
        f"     (verifies the md5s, extracts the archive), then: dvsgkit events --root {Path(root)}",
        "Or, with a lab mirror or shared disk holding the same files:",
        f"  dvsgkit download --root {Path(root)} --from URL_OR_DIR",
        f"The dataset is licensed {LICENSE_NAME}: cite {ATTRIBUTION}.",
    ]
    return "\n".join(lines)


def install_mapping(root: Path) -> Path:
    """Copy the verified ROOT/download/gesture_mapping.csv to ROOT/extract/, where the SpikingJelly
    layout keeps it beside DvsGesture/, atomically."""
    dest = make_folder(Path(root) / EXTRACT_DIR, SPACE_FIX) / MAPPING_NAME
    with storage_errors(dest, "write", SPACE_FIX), atomic_file(dest) as tmp:
        shutil.copyfile(download_dir(root) / MAPPING_NAME, tmp)
    return dest


def archive_status(statuses: Sequence[FileStatus]) -> FileStatus | None:
    """The status of DvsGesture.tar.gz in `statuses`, if the table has it."""
    return next((s for s in statuses if s.resource.name == ARCHIVE_NAME), None)
