"""Check, fetch (resume, retry), verify and rename the four DvsGesture files in ROOT/download/."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from dvsgkit import __version__
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
from dvsgkit.io.atomic import atomic_path, write_text_atomic

VERIFY_CACHE = ".dvsgkit-md5.json"  # in ROOT/download/: name -> {size, mtime_ns, md5}
PARTIAL_SUFFIX = ".partial"
CHUNK = (
    4 << 20
)  # 4 MiB: big enough for hashlib/disk throughput, small enough for a live progress bar
RETRY_DELAYS = (1.0, 4.0, 15.0)  # seconds before retry 1, 2, 3 of a transient network failure
TIMEOUT = 60.0  # seconds without a byte before a connection counts as dropped
# HTTP statuses worth a retry; any other error status (404, 403, ...) is the mirror's final word.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

VERIFIED, MISSING, CORRUPT = "verified", "missing", "corrupt"


class DownloadError(Exception):
    """A resource could not be fetched from the given source."""


class ChecksumError(DownloadError):
    """A fetched or present file does not have the md5 the resource table declares."""


class _TransientError(Exception):
    """A failure that a retry may cure (dropped connection, 5xx, timeout)."""


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


def md5_file(path: Path, *, chunk: int = CHUNK, progress: bool = False) -> str:
    """Hex md5 of a file, read in `chunk`-byte pieces (constant memory for the 3 GB archive)."""
    from tqdm import tqdm

    digest = hashlib.md5()
    with (
        open(path, "rb") as f,
        tqdm(
            total=os.fstat(f.fileno()).st_size,
            unit="B",
            unit_scale=True,
            desc=f"md5 {Path(path).name.removesuffix(PARTIAL_SUFFIX)}",
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        while block := f.read(chunk):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


class _VerifyCache:
    """Remembers each file's md5 keyed by (size, mtime_ns), so a rerun does not rehash 3 GB.

    A file replaced or appended to changes size or mtime and is hashed again; `--rehash`
    ignores the cache for a file edited in place with its mtime restored."""

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
        write_text_atomic(self.path, json.dumps(self.entries, indent=1, sort_keys=True))


def check_resources(
    root: Path,
    *,
    resources: Sequence[Resource] = RESOURCES,
    rehash: bool = False,
    progress: bool = False,
) -> list[FileStatus]:
    """State of every resource in ROOT/download/: verified, missing or corrupt (md5 differs)."""
    directory = download_dir(root)
    cache = _VerifyCache(directory)
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


def resolve_source(source: str) -> tuple[str, str]:
    """("url", base) for an http(s) URL, ("dir", path) for a file URL or a local directory."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        return "url", source.rstrip("/")
    if parsed.scheme == "file":
        path = urllib.request.url2pathname(parsed.path)
    elif "://" in source:
        raise ValueError(
            f"--from {source!r}: unsupported scheme {parsed.scheme!r}; "
            "give an http(s):// or file:// URL or a local directory"
        )
    else:
        path = source
    if not Path(path).is_dir():
        raise FileNotFoundError(f"--from {source!r}: {path} is not a directory")
    return "dir", path


def _open_url(url: str, offset: int, timeout: float) -> tuple[BinaryIO | None, int, int | None]:
    """Open `url` asking for bytes from `offset`; return (stream, start, total length).

    The stream is None when the server answers 416 (nothing after `offset`). `start` is where the
    stream's first byte belongs in the file: `offset` after a 206, 0 after a 200 (no Range)."""
    headers = {"User-Agent": f"dvsgkit/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            return None, offset, None
        message = f"{url}: HTTP {exc.code} {exc.reason}"
        if exc.code in TRANSIENT_STATUS:
            raise _TransientError(message) from exc
        raise DownloadError(message) from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        # Refused, reset, timed out, DNS hiccup: all may pass; a dead host exhausts the retries.
        raise _TransientError(f"{url}: {getattr(exc, 'reason', exc)}") from exc
    length = response.headers.get("Content-Length")
    length = int(length) if length is not None and length.isdigit() else None
    if response.status == 206:
        # Content-Range: bytes START-END/TOTAL; trust only a range that starts where we asked.
        first = response.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
        if first.strip() != str(offset):
            response.close()
            raise _TransientError(f"{url}: server sent Content-Range {first!r}, asked {offset}")
        return response, offset, None if length is None else offset + length
    return response, 0, length


def _open_file(path: Path, offset: int) -> tuple[BinaryIO | None, int, int | None]:
    """A local mirror file opened for reading from `offset` (seek resumes a copy for free)."""
    if not path.is_file():
        raise DownloadError(f"{path} not found in the mirror directory")
    total = path.stat().st_size
    if offset and offset >= total:  # (offset 0 opens even an empty file: the .partial must exist)
        return (None, offset, None) if offset == total else (path.open("rb"), 0, total)
    f = path.open("rb")
    f.seek(offset)
    return f, offset, total


def _transfer_once(
    opener: Callable[[int], tuple[BinaryIO | None, int, int | None]],
    partial: Path,
    desc: str,
    progress: bool,
) -> None:
    """One attempt: append to (or restart) `partial` from what the source sends."""
    from tqdm import tqdm

    have = partial.stat().st_size if partial.exists() else 0
    stream, start, total = opener(have)
    if stream is None:
        return  # the source has nothing after what we hold: verify it
    written = start
    try:
        with (
            stream,
            open(partial, "ab" if start else "wb") as out,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                desc=desc,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while block := stream.read(CHUNK):
                out.write(block)
                written += len(block)
                bar.update(len(block))
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        raise _TransientError(f"{desc}: connection lost after {written} bytes ({exc})") from exc
    if total is not None and written < total:
        # urllib returns a short body without complaint when the peer closes early.
        raise _TransientError(f"{desc}: connection closed after {written} of {total} bytes")


def fetch_resource(
    resource: Resource,
    source: str,
    dest_dir: Path,
    *,
    retry_delays: Sequence[float] = RETRY_DELAYS,
    timeout: float = TIMEOUT,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Fetch <source>/<name> to dest_dir/<name>.partial, verify its md5, rename to <name>.

    A present .partial is resumed (HTTP Range; a server without Range restarts it). Transient
    network failures are retried len(retry_delays) times, sleeping retry_delays[i] first. A file
    with the wrong md5 is deleted, never renamed; when a resumed file fails, the stale head of the
    .partial may be the culprit, so it is fetched once more from byte 0 before giving up."""
    kind, base = resolve_source(source)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / resource.name
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    if kind == "url":
        where = f"{base}/{urllib.parse.quote(resource.name)}"

        def opener(offset: int) -> tuple[BinaryIO | None, int, int | None]:
            return _open_url(where, offset, timeout)

    else:
        where = str(Path(base) / resource.name)

        def opener(offset: int) -> tuple[BinaryIO | None, int, int | None]:
            return _open_file(Path(where), offset)

    resumed = partial.exists() and partial.stat().st_size > 0
    while True:
        for attempt in range(len(retry_delays) + 1):
            try:
                _transfer_once(opener, partial, resource.name, progress)
                break
            except _TransientError as exc:
                if attempt == len(retry_delays):
                    tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
                    raise DownloadError(
                        f"{where}: gave up after {tries}; last error: {exc}. "
                        f"{partial.name} keeps what arrived; rerun to resume"
                    ) from exc
                sleep(retry_delays[attempt])
        digest = md5_file(partial, progress=progress)
        if digest == resource.md5:
            break
        partial.unlink()
        if resumed:
            resumed = False  # retry once from zero: the old .partial came from elsewhere
            continue
        raise ChecksumError(
            f"{resource.name} from {where}: md5 {digest}, expected {resource.md5}; "
            "the mirror holds a different or damaged file (deleted, not kept)"
        )
    os.replace(partial, final)
    _VerifyCache(dest_dir).remember(final, digest)
    return final


def fetch_missing(
    root: Path,
    source: str,
    statuses: Sequence[FileStatus],
    *,
    retry_delays: Sequence[float] = RETRY_DELAYS,
    timeout: float = TIMEOUT,
    progress: bool = True,
) -> list[FileStatus]:
    """Fetch every resource not yet verified; return the new states, with `error` on failures.

    One failing file does not stop the others: the user sees every problem in one run."""
    resolve_source(source)  # a bad --from is one error, not four
    out = []
    for s in statuses:
        if s.verified:
            out.append(s)
            continue
        try:
            path = fetch_resource(
                s.resource,
                source,
                download_dir(root),
                retry_delays=retry_delays,
                timeout=timeout,
                progress=progress,
            )
        except DownloadError as exc:
            partial = s.path.with_name(s.path.name + PARTIAL_SUFFIX)
            kept = partial.stat().st_size if partial.exists() else 0
            out.append(replace(s, partial_bytes=kept, error=str(exc)))
            continue
        out.append(FileStatus(s.resource, path, VERIFIED, path.stat().st_size, s.resource.md5, 0))
    return out


def install_mapping(root: Path) -> Path:
    """Copy the verified ROOT/download/gesture_mapping.csv to ROOT/extract/, where the SpikingJelly
    layout keeps it beside DvsGesture/. Atomic: copy to a .partial, then rename."""
    src = download_dir(root) / MAPPING_NAME
    dest = Path(root) / EXTRACT_DIR / MAPPING_NAME
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def archive_status(statuses: Sequence[FileStatus]) -> FileStatus | None:
    """The status of DvsGesture.tar.gz in `statuses`, if the table has it."""
    return next((s for s in statuses if s.resource.name == ARCHIVE_NAME), None)
