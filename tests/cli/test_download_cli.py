"""`dvsgkit download`: manual steps, a local or HTTP mirror, corrupt files, no heavy imports."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import dvsgkit_cli.download as download_cmd
from dvsgkit.constants import IBM_BOX_URL, Resource

NAMES = ("DvsGesture.tar.gz", "gesture_mapping.csv", "LICENSE.txt", "README.txt")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _archive(path: Path, members: dict[str, bytes]) -> None:
    src = path.parent / "src"
    for name, data in members.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / "DvsGesture", arcname="DvsGesture")
        for name in members:
            if not name.startswith("DvsGesture/"):
                tar.add(src / name, arcname=name)  # e.g. a hostile "../x" added by a test


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lab mirror in the real layout (tiny files); the command's table points at their md5s."""
    m = tmp_path / "mirror"
    m.mkdir()
    _archive(
        m / "DvsGesture.tar.gz",
        {
            "DvsGesture/user01_natural.aedat": b"#!AER-DAT3.1\r\n#!END-HEADER\r\n",
            "DvsGesture/user01_natural_labels.csv": b"class,startTime_usec,endTime_usec\n1,0,10\n",
            "DvsGesture/trials_to_train.txt": b"user01_natural.aedat\n",
            "DvsGesture/trials_to_test.txt": b"\n",
        },
    )
    (m / "gesture_mapping.csv").write_text("action,label\nhand_clapping,1\n")
    (m / "LICENSE.txt").write_text("CC BY 4.0\n")
    (m / "README.txt").write_text("DVS128 Gesture\n")
    table = tuple(Resource(n, _md5(m / n)) for n in NAMES)
    monkeypatch.setattr(download_cmd, "RESOURCES", table)
    return m


def test_without_files_or_mirror_prints_the_manual_steps(
    tmp_path: Path, mirror: Path, run_cli
) -> None:
    code, out = run_cli("download", "--root", str(tmp_path / "root"))
    assert code == 1
    assert out.count("missing") == 4
    assert IBM_BOX_URL in out
    for res in download_cmd.RESOURCES:
        assert res.name in out and res.md5 in out
    assert str((tmp_path / "root" / "download").resolve()) in out
    assert "dvsgkit download --root" in out


def test_mirror_directory_then_rerun_is_a_no_op(tmp_path: Path, mirror: Path, run_cli) -> None:
    root = tmp_path / "root"
    code, out = run_cli("download", "--root", str(root), "--from", str(mirror))
    assert code == 0, out
    assert out.count("verified") == 4
    data = root / "extract" / "DvsGesture"
    assert (data / "trials_to_train.txt").read_text() == "user01_natural.aedat\n"
    assert (root / "extract" / "gesture_mapping.csv").read_text().startswith("action,label")
    for name in NAMES:
        assert (root / "download" / name).read_bytes() == (mirror / name).read_bytes()
    # Nothing to fetch or extract the second time, and no --from needed.
    code, out = run_cli("download", "--root", str(root))
    assert code == 0 and "already holds a complete extraction" in out


@pytest.fixture
def http_mirror(mirror: Path) -> Iterator[str]:
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(mirror))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def test_http_mirror(tmp_path: Path, http_mirror: str, run_cli) -> None:
    code, out = run_cli("download", "--root", str(tmp_path / "root"), "--from", http_mirror)
    assert code == 0, out
    assert (tmp_path / "root" / "extract" / "DvsGesture" / "user01_natural.aedat").is_file()


def test_wrong_file_on_the_mirror_fails_naming_both_checksums(
    tmp_path: Path, mirror: Path, run_cli
) -> None:
    expected = _md5(mirror / "README.txt")
    (mirror / "README.txt").write_text("not the README\n")
    root = tmp_path / "root"
    code, out = run_cli("download", "--root", str(root), "--from", str(mirror))
    assert code == 1
    assert expected in out and _md5(mirror / "README.txt") in out
    assert "1 of 4 files not verified" in out and "README.txt" in out
    assert not (root / "download" / "README.txt").exists()
    # The archive was fine: it is extracted all the same, and the rerun only lacks the README.
    assert (root / "extract" / "DvsGesture" / "trials_to_train.txt").is_file()


def test_corrupt_local_file_is_reported_not_trusted(tmp_path: Path, mirror: Path, run_cli) -> None:
    d = tmp_path / "root" / "download"
    d.mkdir(parents=True)
    for name in NAMES:
        (d / name).write_bytes((mirror / name).read_bytes())
    (d / "LICENSE.txt").write_text("edited\n")
    code, out = run_cli("download", "--root", str(tmp_path / "root"))
    assert code == 1
    assert "corrupt" in out and hashlib.md5(b"edited\n").hexdigest() in out
    assert "present but corrupt: replace it" in out
    assert not (tmp_path / "root" / "extract").exists()  # stops at the manual steps
    code, out = run_cli("download", "--root", str(tmp_path / "root"), "--from", str(mirror))
    assert code == 0, out
    assert (d / "LICENSE.txt").read_bytes() == (mirror / "LICENSE.txt").read_bytes()


def test_hostile_archive_is_refused_cleanly(
    tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    _archive(mirror / "DvsGesture.tar.gz", {"DvsGesture/a.txt": b"a", "../evil.txt": b"x"})
    table = tuple(Resource(n, _md5(mirror / n)) for n in NAMES)
    monkeypatch.setattr(download_cmd, "RESOURCES", table)
    code, out = run_cli("download", "--root", str(tmp_path / "root"), "--from", str(mirror))
    assert code == 1
    assert "refusing member '../evil.txt'" in out
    assert not (tmp_path / "root" / "extract" / "DvsGesture").exists()


def test_archive_damaged_in_place_after_its_md5_was_cached(
    tmp_path: Path, mirror: Path, run_cli
) -> None:
    """An edit that keeps the size and mtime passes the md5 cache: the extraction finds the
    damage, says so in one line with the fix, and leaves nothing; the fix works."""
    root = tmp_path / "root"
    assert run_cli("download", "--root", str(root), "--from", str(mirror))[0] == 0
    shutil.rmtree(root / "extract")
    archive = root / "download" / "DvsGesture.tar.gz"
    st = archive.stat()
    data = bytearray(archive.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)
    archive.write_bytes(bytes(data))
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns))
    code, out = run_cli("download", "--root", str(root))
    assert code == 1
    (error,) = [line for line in out.splitlines() if line.startswith("Error:")]
    assert error.startswith(f"Error: {archive}: cannot read the archive after ")
    assert error.endswith("check it with 'dvsgkit download --rehash', or delete it and download "
                          "it again")  # fmt: skip
    assert os.listdir(root / "extract") == []
    code, out = run_cli("download", "--root", str(root), "--rehash", "--from", str(mirror))
    assert code == 0, out
    assert "corrupt" in out
    assert (root / "extract" / "DvsGesture" / "trials_to_train.txt").is_file()


def test_unsupported_source_scheme(tmp_path: Path, mirror: Path, run_cli) -> None:
    code, out = run_cli(
        "download", "--root", str(tmp_path / "root"), "--from", "ftp://lab.example/dvs"
    )
    assert code == 1 and "unsupported scheme 'ftp'" in out


# Runs the command in a fresh interpreter where torch, zarr, h5py and cupy cannot be imported.
BLOCKED_RUN = """
import json, sys
HEAVY = {"torch", "zarr", "h5py", "cupy"}
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HEAVY:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Refuse())
try:
    import h5py  # noqa: F401
    raise SystemExit("the blocker does not work")
except ImportError:
    pass
from dvsgkit.constants import Resource
import dvsgkit_cli.download as cmd
from dvsgkit_cli.main import cli
cmd.RESOURCES = tuple(Resource(n, m) for n, m in json.loads(sys.argv[1]))
cli(sys.argv[2:], prog_name="dvsgkit", standalone_mode=False)
print("heavy:", sorted(HEAVY & set(sys.modules)))
"""


def test_works_without_torch_zarr_h5py_cupy(tmp_path: Path, mirror: Path) -> None:
    table = json.dumps([[r.name, r.md5] for r in download_cmd.RESOURCES])
    root = tmp_path / "root"
    args = ["download", "--root", str(root), "--from", str(mirror)]
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, table, *args], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "heavy: []" in proc.stdout
    assert (root / "extract" / "DvsGesture" / "trials_to_test.txt").is_file()
