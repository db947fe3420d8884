"""ROOT/download/ against the resource table: states, the md5 cache, the manual steps."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from dvsgkit import constants
from dvsgkit.constants import Resource
from dvsgkit.io.download import (
    CORRUPT,
    MISSING,
    VERIFIED,
    VERIFY_CACHE,
    check_resources,
    download_dir,
    format_table,
    manual_steps,
)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_real_resource_table_is_the_published_one() -> None:
    table = {r.name: r.md5 for r in constants.RESOURCES}
    assert table == {
        "DvsGesture.tar.gz": "8a5c71fb11e24e5ca5b11866ca6c00a1",
        "gesture_mapping.csv": "109b2ae64a0e1f3ef535b18ad7367fd1",
        "LICENSE.txt": "065e10099753156f18f51941e6e44b66",
        "README.txt": "a0663d3b1d8307c329a43d949ee32d19",
    }
    assert constants.ARCHIVE_NAME in table
    assert constants.IBM_BOX_URL.startswith("https://ibm.ent.box.com/")


def test_check_reports_verified_missing_and_corrupt(tmp_path: Path) -> None:
    d = download_dir(tmp_path)
    d.mkdir(parents=True)
    (d / "good.bin").write_bytes(b"good")
    (d / "bad.bin").write_bytes(b"bad!")
    (d / "gone.bin.partial").write_bytes(b"12345")
    table = [
        Resource("good.bin", md5(b"good")),
        Resource("bad.bin", md5(b"good")),
        Resource("gone.bin", md5(b"x")),
    ]
    good, bad, gone = check_resources(tmp_path, resources=table)
    assert (good.state, good.md5, good.size) == (VERIFIED, md5(b"good"), 4)
    assert (bad.state, bad.md5) == (CORRUPT, md5(b"bad!"))
    assert (gone.state, gone.size, gone.partial_bytes) == (MISSING, None, 5)
    text = format_table([good, bad, gone])
    for needle in ("verified", "corrupt", "missing", md5(b"bad!"), "gone.bin.partial, will resume"):
        assert needle in text


def test_md5_cache_is_keyed_by_size_and_mtime_and_rehash_ignores_it(tmp_path: Path) -> None:
    d = download_dir(tmp_path)
    d.mkdir(parents=True)
    f = d / "a.bin"
    f.write_bytes(b"original")
    table = [Resource("a.bin", md5(b"original"))]
    assert check_resources(tmp_path, resources=table)[0].state == VERIFIED
    assert (d / VERIFY_CACHE).is_file()
    # Same size, mtime restored: the cache answers without reading the file.
    st = f.stat()
    f.write_bytes(b"tampered")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert check_resources(tmp_path, resources=table)[0].state == VERIFIED
    assert check_resources(tmp_path, resources=table, rehash=True)[0].state == CORRUPT
    # The rehash updated the cache, and any new mtime is hashed again anyway.
    assert check_resources(tmp_path, resources=table)[0].state == CORRUPT
    f.write_bytes(b"original")
    assert check_resources(tmp_path, resources=table)[0].state == VERIFIED


def test_damaged_cache_is_ignored(tmp_path: Path) -> None:
    d = download_dir(tmp_path)
    d.mkdir(parents=True)
    (d / "a.bin").write_bytes(b"x")
    (d / VERIFY_CACHE).write_text("{not json")
    assert check_resources(tmp_path, resources=[Resource("a.bin", md5(b"x"))])[0].verified


def test_manual_steps_say_where_what_and_next(tmp_path: Path) -> None:
    statuses = check_resources(tmp_path)  # the real table, nothing downloaded
    text = manual_steps(tmp_path, statuses)
    assert constants.IBM_BOX_URL in text
    for r in constants.RESOURCES:
        assert r.name in text and r.md5 in text
    assert str(download_dir(tmp_path).resolve()) in text
    assert f"dvsgkit download --root {tmp_path}" in text
    assert "--from" in text
    assert "CC BY 4.0" in text and "http://research.ibm.com/dvsgesture" in text
