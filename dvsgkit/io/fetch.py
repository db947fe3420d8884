"""Fetch a DvsGesture file from a mirror (HTTP(S) or a folder) into ROOT/download/: resume with
HTTP ranges, retry transient failures, verify the md5, then rename."""

from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

from dvsgkit import __version__
from dvsgkit.constants import Resource
from dvsgkit.errors import DvsgkitError, InputError, NotFound, storage_errors
from dvsgkit.fs import make_folder
from dvsgkit.io.download import (
    CHUNK,
    PARTIAL_SUFFIX,
    SPACE_FIX,
    VERIFIED,
    FileStatus,
    VerifyCache,
    byte_bar,
    download_dir,
    md5_file,
)

RETRY_DELAYS = (1.0, 4.0, 15.0)  # seconds before retry 1, 2, 3 of a transient network failure
TIMEOUT = 60.0  # seconds without a byte before a connection counts as dropped
# HTTP statuses worth a retry; any other error status (404, 403, ...) is the mirror's final word.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(DvsgkitError):
    """A resource could not be fetched from the given source."""


class ChecksumError(DownloadError):
    """A fetched or present file does not have the md5 the resource table declares."""


class _TransientError(DvsgkitError):
    """A failure that a retry may cure (dropped connection, 5xx, timeout)."""


def resolve_source(source: str) -> tuple[str, str]:
    """("url", base) for an http(s) URL, ("dir", path) for a file URL or a local directory."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        return "url", source.rstrip("/")
    if parsed.scheme == "file":
        path = urllib.request.url2pathname(parsed.path)
    elif "://" in source:
        raise InputError(
            f"--from {source!r}: unsupported scheme {parsed.scheme!r}; "
            "give an http(s):// or file:// URL or a local directory"
        )
    else:
        path = source
    if not Path(path).is_dir():
        raise NotFound(f"--from {source!r}: {path} is not a directory")
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
        if 300 <= exc.code < 400:  # urllib stopped following redirects (its reason: 3 lines)
            if exc.headers.get("Location") or exc.headers.get("URI"):
                limit = urllib.request.HTTPRedirectHandler.max_redirections
                why = f"the server's redirects go round in a loop (or past {limit})"
            else:
                why = "the server redirects without saying where to"
            raise DownloadError(
                f"{url}: HTTP {exc.code}: {why}; open the URL in a browser and give --from the "
                "address the files are served from"
            ) from exc
        message = f"{url}: HTTP {exc.code} {' '.join(str(exc.reason).split())}"
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
    have = partial.stat().st_size if partial.exists() else 0
    stream, start, total = opener(have)
    if stream is None:
        return  # the source has nothing after what we hold: verify it
    written = start
    try:
        with (  # a full disk is one line, and stops every fetch
            stream,
            storage_errors(partial, "write", SPACE_FIX),
            open(partial, "ab" if start else "wb") as out,
            byte_bar(total, desc, progress, initial=start) as bar,
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
    final = make_folder(dest_dir, SPACE_FIX) / resource.name
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
    VerifyCache(dest_dir).remember(final, digest)
    return final


def fetch_missing(
    root: Path,
    source: str,
    statuses: Sequence[FileStatus],
    **options: Any,
) -> list[FileStatus]:
    """Fetch every resource not yet verified (`options` as `fetch_resource` takes them); return
    the new states, with `error` on failures. One failing file does not stop the others: the
    user sees every problem in one run (a full disk stops all: StorageError)."""
    resolve_source(source)  # a bad --from is one error, not four
    out = []
    for s in statuses:
        if s.verified:
            out.append(s)
            continue
        try:
            path = fetch_resource(s.resource, source, download_dir(root), **options)
        except DownloadError as exc:
            partial = s.path.with_name(s.path.name + PARTIAL_SUFFIX)
            kept = partial.stat().st_size if partial.exists() else 0
            out.append(replace(s, partial_bytes=kept, error=str(exc)))
            continue
        out.append(FileStatus(s.resource, path, VERIFIED, path.stat().st_size, s.resource.md5, 0))
    return out
