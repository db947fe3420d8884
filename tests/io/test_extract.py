"""Safe extraction: a real-layout archive, the completion marker, and archives crafted to attack."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dvsgkit import fs
from dvsgkit.errors import StorageError
from dvsgkit.io import extract
from dvsgkit.io.extract import (
    MARKER,
    ArchiveError,
    UnsafeArchiveError,
    is_extracted,
    safe_extract,
)

if TYPE_CHECKING:
    from conftest import Writers  # the `killable` fixture

# (kind, name, payload): payload is the bytes of a file or the target of a link.
Entry = tuple[str, str, bytes | str | None]

GOOD: list[Entry] = [
    ("dir", "DvsGesture", None),
    ("file", "DvsGesture/user01_natural.aedat", b"#!AER-DAT3.1\r\n#!END-HEADER\r\n"),
    ("file", "DvsGesture/user01_natural_labels.csv", b"class,startTime_usec,endTime_usec\n"),
    ("file", "DvsGesture/trials_to_train.txt", b"user01_natural.aedat\n"),
    ("file", "./DvsGesture/trials_to_test.txt", b"\n"),  # "./" prefixes are normal in tarballs
    ("sym", "DvsGesture/latest.aedat", "user01_natural.aedat"),  # a link inside is fine
    ("hard", "DvsGesture/copy.aedat", "DvsGesture/user01_natural.aedat"),
]


def make_tar(path: Path, entries: list[Entry]) -> Path:
    """Write a .tar.gz holding exactly `entries`, hostile ones included (tarfile does not judge)."""
    types = {
        "dir": tarfile.DIRTYPE,
        "file": tarfile.REGTYPE,
        "sym": tarfile.SYMTYPE,
        "hard": tarfile.LNKTYPE,
        "chr": tarfile.CHRTYPE,
        "blk": tarfile.BLKTYPE,
        "fifo": tarfile.FIFOTYPE,
    }
    with tarfile.open(path, "w:gz") as tar:
        for kind, name, payload in entries:
            info = tarfile.TarInfo(name)
            info.type = types[kind]
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind == "file":
                assert isinstance(payload, bytes)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            if kind in ("sym", "hard"):
                assert isinstance(payload, str)
                info.linkname = payload
            tar.addfile(info)
    return path


def md5(path: Path) -> str:
    """The archive's md5, as `dvsgkit download` verified it (safe_extract checks it as it reads)."""
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "root" / "extract"


def test_extracts_the_real_layout_and_records_a_marker(tmp_path: Path, dest: Path) -> None:
    archive = make_tar(tmp_path / "DvsGesture.tar.gz", GOOD)
    checksum = md5(archive)
    assert safe_extract(archive, dest, archive_md5=checksum) is True
    data = dest / "DvsGesture"
    assert (data / "user01_natural.aedat").read_bytes() == GOOD[1][2]
    assert (data / "trials_to_test.txt").read_bytes() == b"\n"
    assert (data / "latest.aedat").is_symlink() and (data / "latest.aedat").read_bytes() == GOOD[1][
        2
    ]
    assert (
        not (data / "copy.aedat").is_symlink() and (data / "copy.aedat").read_bytes() == GOOD[1][2]
    )
    marker = json.loads((dest / MARKER).read_text())
    assert marker["archive_md5"] == checksum
    assert marker["files"]["DvsGesture/trials_to_train.txt"] == len(b"user01_natural.aedat\n")
    assert sorted(p.name for p in dest.iterdir()) == [MARKER, "DvsGesture"]  # no temp folder left
    # Complete and verified: a rerun does not even open the archive.
    archive.unlink()
    assert safe_extract(archive, dest, archive_md5=checksum) is False


@pytest.mark.parametrize(
    "damage",
    ["delete a file", "truncate a file", "other archive md5", "no marker", "bad marker"],
)
def test_incomplete_or_foreign_extraction_is_redone(
    tmp_path: Path, dest: Path, damage: str
) -> None:
    archive = make_tar(tmp_path / "DvsGesture.tar.gz", GOOD)
    checksum = md5(archive)
    safe_extract(archive, dest, archive_md5=checksum)
    aedat = dest / "DvsGesture" / "user01_natural.aedat"
    (dest / "DvsGesture" / "stale.txt").write_text("from an older extraction")
    digest = checksum
    if damage == "delete a file":
        aedat.unlink()
    elif damage == "truncate a file":
        aedat.write_bytes(b"#!")
    elif damage == "other archive md5":
        archive = make_tar(archive, [*GOOD, ("file", "DvsGesture/new.txt", b"new")])
        digest = md5(archive)
    elif damage == "no marker":
        (dest / MARKER).unlink()
    else:
        (dest / MARKER).write_text("{")
    assert not is_extracted(dest, digest)
    assert safe_extract(archive, dest, archive_md5=digest) is True
    assert aedat.read_bytes() == GOOD[1][2]
    assert not (dest / "DvsGesture" / "stale.txt").exists()  # the folder was replaced whole
    assert is_extracted(dest, digest)


# Extracts argv[1] (md5 argv[3]) into argv[2] and stops once every member is written, before
# the swap.
EXTRACTOR = """
import sys, time
from pathlib import Path
from dvsgkit.io import extract
real = extract._extract_into
def then_stop(*args):
    done = real(*args)
    print("writing", flush=True)
    time.sleep(600)
extract._extract_into = then_stop
extract.safe_extract(Path(sys.argv[1]), Path(sys.argv[2]), archive_md5=sys.argv[3])
"""


def test_leftovers_of_a_killed_run_are_cleared(
    tmp_path: Path, dest: Path, killable: Writers
) -> None:
    archive = make_tar(tmp_path / "DvsGesture.tar.gz", GOOD)
    checksum = md5(archive)
    dead = killable.killed(EXTRACTOR, archive, dest, checksum)
    (leftover,) = dest.iterdir()  # nothing under a real name
    assert leftover.name.startswith(f".DvsGesture.tar.gz.{dead}-")
    assert (leftover / "DvsGesture" / "user01_natural.aedat").is_file()
    assert not is_extracted(dest, checksum)
    assert safe_extract(archive, dest, archive_md5=checksum) is True
    assert is_extracted(dest, checksum)
    hidden = sorted(p.name for p in dest.iterdir() if p.name != MARKER and p.name.startswith("."))
    assert hidden == []  # the killed run's folder is gone


HOSTILE: dict[str, tuple[list[Entry], str]] = {
    "absolute path": ([("file", "/tmp/dvsgkit-evil.txt", b"x")], "/tmp/dvsgkit-evil.txt"),
    "windows drive": ([("file", "C:/evil.txt", b"x")], "C:/evil.txt"),
    "dot-dot": ([("file", "../evil.txt", b"x")], "../evil.txt"),
    "dot-dot inside": ([("file", "DvsGesture/../../evil.txt", b"x")], "DvsGesture/../../evil.txt"),
    "symlink outside": ([("sym", "DvsGesture/up", "../../outside")], "DvsGesture/up"),
    "absolute symlink": ([("sym", "DvsGesture/pw", "/etc/passwd")], "DvsGesture/pw"),
    "hardlink outside": ([("hard", "DvsGesture/h", "../outside/secret")], "DvsGesture/h"),
    "absolute hardlink": ([("hard", "DvsGesture/h", "/etc/passwd")], "DvsGesture/h"),
    "character device": ([("chr", "DvsGesture/tty", None)], "character device"),
    "block device": ([("blk", "DvsGesture/sda", None)], "block device"),
    "fifo": ([("fifo", "DvsGesture/pipe", None)], "FIFO"),
    # A link that looks harmless, then a file written through it.
    "write through symlink": (
        [("sym", "DvsGesture/l", "."), ("file", "DvsGesture/l/x.txt", b"x")],
        "goes through the symlink",
    ),
    # Each link stays inside on paper; together they resolve outside.
    "chained symlinks": (
        [
            ("dir", "DvsGesture/d", None),
            ("sym", "DvsGesture/d/l", ".."),
            ("sym", "DvsGesture/m", "d/l/../.."),
        ],
        "DvsGesture/m",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused_and_nothing_lands(
    tmp_path: Path, dest: Path, case: str
) -> None:
    entries, names = HOSTILE[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("keep")
    good = [e for e in GOOD if e[0] in ("dir", "file")]
    archive = make_tar(tmp_path / "DvsGesture.tar.gz", [*good, *entries])
    with pytest.raises(UnsafeArchiveError, match="refusing") as info:
        safe_extract(archive, dest, archive_md5=md5(archive))
    assert names in str(info.value)
    assert list(dest.iterdir()) == []  # no DvsGesture/, no marker, no temp folder
    assert [p.name for p in outside.iterdir()] == ["secret"]
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "root" / "evil.txt").exists()
    assert not Path("/tmp/dvsgkit-evil.txt").exists()


def test_refusal_keeps_a_previous_good_extraction(tmp_path: Path, dest: Path) -> None:
    good = make_tar(tmp_path / "good.tar.gz", GOOD)
    safe_extract(good, dest, archive_md5=md5(good))
    bad = make_tar(tmp_path / "bad.tar.gz", [*GOOD, ("file", "../evil.txt", b"x")])
    with pytest.raises(UnsafeArchiveError, match=r"'\.\./evil\.txt'"):
        safe_extract(bad, dest, archive_md5=md5(bad))
    assert is_extracted(dest, md5(good))


def _leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


def _damage(archive: Path, how: str) -> None:
    """Damage the archive in place, as a disk or a hand might (the md5 cache would not notice
    those that keep the size and mtime)."""
    data = bytearray(archive.read_bytes())
    if how == "truncated":
        del data[len(data) // 2 :]
    elif how == "garbage":
        data[:] = hashlib.sha512(data).digest() * (len(data) // 64 + 1)
        del data[len(archive.read_bytes()) :]
    elif how == "second half zeroed":
        data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)
    else:  # one byte of the gzip trailer: tarfile reads on, only the md5 tells
        data[-5] ^= 0xFF
    archive.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "garbage", "second half zeroed", "trailer byte"])
def test_a_damaged_archive_is_one_line_and_nothing_lands(
    tmp_path: Path, dest: Path, how: str
) -> None:
    payload = ("file", "DvsGesture/user02_led.aedat", hashlib.sha512(b"x").digest() * 2000)
    archive = make_tar(tmp_path / "DvsGesture.tar.gz", [*GOOD, payload])
    verified = md5(archive)  # what the md5 cache remembers
    _damage(archive, how)
    with pytest.raises(ArchiveError) as info:
        safe_extract(archive, dest, archive_md5=verified)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{archive}: ")
    assert "nothing was extracted" in message
    assert message.endswith(
        "check it with 'dvsgkit download --rehash', or delete it and download it again"
    )
    assert _leftovers(dest) == []  # no DvsGesture/, no marker, no temporary folder


def test_a_member_declaring_a_terabyte_is_refused_before_writing(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tarfile.TarInfo("DvsGesture/user01_natural.aedat")
    big.size = 1 << 40  # the header says 1 TiB; a few bytes follow
    archive = tmp_path / "DvsGesture.tar.gz"
    archive.write_bytes(gzip.compress(big.tobuf(tarfile.GNU_FORMAT) + bytes(4096)))
    monkeypatch.setattr(fs, "free_bytes", lambda folder: 100 * 10**9)
    with pytest.raises(StorageError) as info:
        safe_extract(archive, dest, archive_md5=md5(archive))
    message = str(info.value)
    assert message.startswith(
        f"not enough free space for {dest / 'DvsGesture' / 'user01_natural.aedat'}: it needs "
        f"about 1,099,511.6 MB, {dest} has 100,000.0 MB free; free some space, or use another "
        "--root; if that size is absurd, DvsGesture.tar.gz is damaged: check it with 'dvsgkit "
        "download --rehash'"
    )
    assert _leftovers(dest) == []


def _extract_on_a_full_disk(tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Extract 6 MB of incompressible data while the free space check is told there is room
    (another program filled the disk after it): the write fails, the error names the path."""
    payload = ("file", "DvsGesture/user02_led.aedat", b"".join(
        hashlib.sha512(i.to_bytes(4, "little")).digest() for i in range(100_000)))  # fmt: skip
    archive = make_tar(tmp_path / "DvsGesture.tar.gz", [*GOOD, payload])
    monkeypatch.setattr(fs, "free_bytes", lambda folder: 10**12)
    with pytest.raises(StorageError) as info:
        safe_extract(archive, dest, archive_md5=md5(archive))
    assert str(info.value) == (
        f"cannot extract DvsGesture.tar.gz into {dest}: no space left on device; free some "
        "space, or use another --root"
    )
    assert _leftovers(dest) == []


def test_a_full_disk_names_the_path(
    tmp_path: Path, small_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _extract_on_a_full_disk(tmp_path, small_fs / "extract", monkeypatch)


def test_a_write_error_without_a_path_is_named(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same where no tmpfs can be mounted: the error a full disk gives, [Errno 28] alone."""

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(extract.shutil, "copyfileobj", full)
    _extract_on_a_full_disk(tmp_path, dest, monkeypatch)
