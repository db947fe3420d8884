"""Fetching from a local HTTP mirror and from folders: resume, retry, verify, rename."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dvsgkit.constants import Resource
from dvsgkit.errors import StorageError
from dvsgkit.io.download import CORRUPT, MISSING, VERIFIED, check_resources, download_dir
from dvsgkit.io.fetch import (
    ChecksumError,
    DownloadError,
    fetch_missing,
    fetch_resource,
    resolve_source,
)

NO_WAIT = (0.0, 0.0, 0.0)  # three retries, no backoff: tests stay fast


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class Mirror:
    """What the test HTTP server serves and how it misbehaves; records every request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.ranges = True  # honour "Range: bytes=N-" with 206, else always 200 from byte 0
        self.drop_after: dict[str, int] = {}  # name -> send only K body bytes, once, then hang up
        self.fail_with: list[int] = []  # statuses answered (in order) before serving anything
        self.redirect: dict[str, str] = {}  # name -> where a 302 sends it (itself: a loop)
        self.requests: list[tuple[str, str | None]] = []  # (name, Range header)
        self.body_bytes_sent = 0
        self.url = ""


def _handler(mirror: Mirror) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            name = urllib.parse.unquote(self.path.lstrip("/"))
            asked = self.headers.get("Range")
            mirror.requests.append((name, asked))
            if mirror.fail_with:
                self.send_error(mirror.fail_with.pop(0))
                return
            if name in mirror.redirect:
                self.send_response(302)
                if mirror.redirect[name]:
                    self.send_header("Location", mirror.redirect[name])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if name not in mirror.files:
                self.send_error(404)
                return
            data = mirror.files[name]
            start = 0
            if asked and mirror.ranges:
                start = int(asked.removeprefix("bytes=").rstrip("-"))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))  # the full length, even if dropped
            self.end_headers()
            if name in mirror.drop_after:
                body = body[: mirror.drop_after.pop(name)]
                self.close_connection = True
            mirror.body_bytes_sent += len(body)  # counted first: the client may finish before
            self.wfile.write(body)  # this thread runs again

    return Handler


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    m = Mirror()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(m))
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    m.url = f"http://127.0.0.1:{server.server_port}/mirror"
    try:
        yield m
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def blob() -> bytes:
    return os.urandom(50_000)


def _fetch(res: Resource, source: str, dest: Path, **kw: object) -> Path:
    kw.setdefault("retry_delays", NO_WAIT)
    return fetch_resource(res, source, dest, timeout=5, progress=False, **kw)  # type: ignore[arg-type]


def _serve(mirror: Mirror, name: str, data: bytes) -> Resource:
    mirror.files[f"mirror/{name}"] = data
    return Resource(name, md5(data))


def test_fetch_verifies_then_renames(tmp_path: Path, mirror: Mirror, blob: bytes) -> None:
    res = _serve(mirror, "a b.bin", blob)  # a space: the URL must be quoted
    path = _fetch(res, mirror.url, tmp_path)
    assert path == tmp_path / "a b.bin" and path.read_bytes() == blob
    assert not (tmp_path / "a b.bin.partial").exists()
    assert mirror.requests == [("mirror/a b.bin", None)]


def test_dropped_connection_resumes_with_range(tmp_path: Path, mirror: Mirror, blob: bytes) -> None:
    res = _serve(mirror, "a.bin", blob)
    mirror.drop_after["mirror/a.bin"] = 1000
    slept: list[float] = []
    _fetch(res, mirror.url, tmp_path, retry_delays=(0.5, 2.0), sleep=slept.append)
    assert (tmp_path / "a.bin").read_bytes() == blob
    assert mirror.requests == [("mirror/a.bin", None), ("mirror/a.bin", "bytes=1000-")]
    assert mirror.body_bytes_sent == len(blob)  # the head was not sent twice
    assert slept == [0.5]


def test_server_without_range_restarts_from_zero(
    tmp_path: Path, mirror: Mirror, blob: bytes
) -> None:
    res = _serve(mirror, "a.bin", blob)
    mirror.ranges = False
    mirror.drop_after["mirror/a.bin"] = 1000
    _fetch(res, mirror.url, tmp_path)
    assert (tmp_path / "a.bin").read_bytes() == blob  # not the head twice
    assert mirror.requests[1] == ("mirror/a.bin", "bytes=1000-")
    assert mirror.body_bytes_sent == 1000 + len(blob)


def test_interrupted_download_is_resumed_by_the_next_run(
    tmp_path: Path, mirror: Mirror, blob: bytes
) -> None:
    res = _serve(mirror, "a.bin", blob)
    mirror.drop_after["mirror/a.bin"] = 1234
    with pytest.raises(DownloadError, match=r"gave up after 1 attempt;.*1234 of 50000 bytes"):
        _fetch(res, mirror.url, tmp_path, retry_delays=())
    assert not (tmp_path / "a.bin").exists()  # half a file never gets the final name
    assert (tmp_path / "a.bin.partial").read_bytes() == blob[:1234]
    _fetch(res, mirror.url, tmp_path)
    assert (tmp_path / "a.bin").read_bytes() == blob
    assert mirror.requests[-1] == ("mirror/a.bin", "bytes=1234-")


def test_complete_partial_gets_416_and_is_verified(
    tmp_path: Path, mirror: Mirror, blob: bytes
) -> None:
    res = _serve(mirror, "a.bin", blob)
    (tmp_path / "a.bin.partial").write_bytes(blob)
    _fetch(res, mirror.url, tmp_path)
    assert (tmp_path / "a.bin").read_bytes() == blob
    assert mirror.requests == [("mirror/a.bin", f"bytes={len(blob)}-")]
    assert mirror.body_bytes_sent == 0


def test_stale_partial_is_fetched_once_more_from_zero(
    tmp_path: Path, mirror: Mirror, blob: bytes
) -> None:
    res = _serve(mirror, "a.bin", blob)
    (tmp_path / "a.bin.partial").write_bytes(b"\0" * 1000)  # a head from some other file
    _fetch(res, mirror.url, tmp_path)
    assert (tmp_path / "a.bin").read_bytes() == blob
    assert mirror.requests == [("mirror/a.bin", "bytes=1000-"), ("mirror/a.bin", None)]


def test_404_fails_at_once_naming_the_url(tmp_path: Path, mirror: Mirror) -> None:
    with pytest.raises(DownloadError, match=r"/mirror/nothere\.bin: HTTP 404"):
        _fetch(Resource("nothere.bin", md5(b"")), mirror.url, tmp_path)
    assert len(mirror.requests) == 1  # a 404 is not retried
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("to", ["itself", "each other", "nowhere"])
def test_a_bad_redirect_is_one_line_naming_the_url_and_the_fix(
    tmp_path: Path, mirror: Mirror, to: str
) -> None:
    mirror.redirect["mirror/a.bin"] = {"itself": "/mirror/a.bin", "nowhere": ""}.get(
        to, "/mirror/b.bin"
    )
    mirror.redirect["mirror/b.bin"] = "/mirror/a.bin"
    with pytest.raises(DownloadError) as info:
        _fetch(Resource("a.bin", md5(b"")), mirror.url, tmp_path)
    why = (
        "the server redirects without saying where to"
        if to == "nowhere"
        else "the server's redirects go round in a loop (or past 10)"
    )
    assert str(info.value) == (
        f"{mirror.url}/a.bin: HTTP 302: {why}; open the URL in a browser and give --from the "
        "address the files are served from"
    )
    assert len(mirror.requests) <= 11  # followed as far as urllib goes, once: not retried
    assert list(tmp_path.iterdir()) == []


def test_transient_errors_are_retried_with_the_given_delays(
    tmp_path: Path, mirror: Mirror, blob: bytes
) -> None:
    res = _serve(mirror, "a.bin", blob)
    mirror.fail_with = [503, 502]
    slept: list[float] = []
    _fetch(res, mirror.url, tmp_path, retry_delays=(0.25, 0.5, 1.0), sleep=slept.append)
    assert (tmp_path / "a.bin").read_bytes() == blob
    assert slept == [0.25, 0.5] and len(mirror.requests) == 3


def test_retries_are_bounded(tmp_path: Path, mirror: Mirror, blob: bytes) -> None:
    res = _serve(mirror, "a.bin", blob)
    mirror.fail_with = [503] * 10
    with pytest.raises(DownloadError, match=r"gave up after 3 attempts.*HTTP 503"):
        _fetch(res, mirror.url, tmp_path, retry_delays=(0.0, 0.0))
    assert len(mirror.requests) == 3
    assert not (tmp_path / "a.bin").exists()


def test_dead_mirror_exhausts_retries(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=r"gave up after 2 attempts"):
        _fetch(Resource("a.bin", md5(b"")), f"http://127.0.0.1:{port}", tmp_path, retry_delays=(0,))


def test_wrong_file_on_the_mirror_is_never_kept(
    tmp_path: Path, mirror: Mirror, blob: bytes
) -> None:
    res = Resource("a.bin", md5(blob))
    wrong = blob[:-1] + bytes([blob[-1] ^ 1])  # one bit off
    mirror.files["mirror/a.bin"] = wrong
    with pytest.raises(ChecksumError) as info:
        _fetch(res, mirror.url, tmp_path)
    message = str(info.value)
    assert "a.bin" in message and res.md5 in message and md5(wrong) in message
    assert list(tmp_path.iterdir()) == []  # neither the final name nor a .partial


def test_empty_file_on_a_local_mirror_is_a_checksum_error(tmp_path: Path) -> None:
    # Nothing to copy is still a fetch: the md5 check must name the file, not trip over a
    # .partial that was never created.
    src = tmp_path / "mirror"
    src.mkdir()
    (src / "a.bin").write_bytes(b"")
    res = Resource("a.bin", md5(b"aaa"))
    with pytest.raises(ChecksumError, match=r"a\.bin from .*md5 d41d8cd98f00b204e9800998ecf8427e"):
        _fetch(res, str(src), tmp_path / "dl")
    assert list((tmp_path / "dl").iterdir()) == []


@pytest.mark.parametrize("kind", ["dir", "file-url"])
def test_fetch_missing_from_local_mirror(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "shared disk"
    src.mkdir()
    (src / "a.bin").write_bytes(b"aaa")
    (src / "b.bin").write_bytes(b"bbb")
    root = tmp_path / "root"
    download_dir(root).mkdir(parents=True)
    (download_dir(root) / "b.bin").write_bytes(b"old")  # corrupt: replaced by the mirror's copy
    (download_dir(root) / "a.bin.partial").write_bytes(b"a")  # resumed by seeking the source
    table = [
        Resource("a.bin", md5(b"aaa")),
        Resource("b.bin", md5(b"bbb")),
        Resource("c.bin", "0" * 32),
    ]
    source = src.as_uri() if kind == "file-url" else str(src)
    before = check_resources(root, resources=table)
    assert [s.state for s in before] == [MISSING, CORRUPT, MISSING]
    after = fetch_missing(root, source, before, retry_delays=(), progress=False)
    assert [s.state for s in after] == [VERIFIED, VERIFIED, MISSING]
    assert "c.bin not found in the mirror" in str(after[2].error)
    assert (download_dir(root) / "a.bin").read_bytes() == b"aaa"
    assert (download_dir(root) / "b.bin").read_bytes() == b"bbb"
    # The md5 cache learned the fetched files: a rerun reports them without error.
    assert [s.state for s in check_resources(root, resources=table)] == [
        VERIFIED,
        VERIFIED,
        MISSING,
    ]


def test_bad_sources_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unsupported scheme 'ftp'"):
        resolve_source("ftp://example.org/dvs")
    with pytest.raises(FileNotFoundError, match=r"nowhere is not a directory"):
        resolve_source(str(tmp_path / "nowhere"))
    assert resolve_source("https://lab.example/dvs/") == ("url", "https://lab.example/dvs")


def test_a_full_disk_stops_every_fetch_with_one_line_naming_the_partial(tmp_path: Path) -> None:
    # The .partial is /dev/full: every write fails with ENOSPC, as in a full download folder.
    src = tmp_path / "mirror"
    src.mkdir()
    (src / "a.bin").write_bytes(b"aaa")
    root = tmp_path / "root"
    download_dir(root).mkdir(parents=True)
    (download_dir(root) / "a.bin.partial").symlink_to("/dev/full")
    table = [Resource("a.bin", md5(b"aaa"))]
    with pytest.raises(StorageError) as err:  # not one file's error among others: it stops
        fetch_missing(root, str(src), check_resources(root, resources=table), progress=False)
    assert str(err.value) == (
        f"cannot write {download_dir(root) / 'a.bin.partial'}: no space left on device; "
        "free some space, or use another --root"
    )
    assert not (download_dir(root) / "a.bin").exists()
