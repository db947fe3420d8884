"""Safe extraction: a real-layout archive, the completion marker, and archives crafted to attack."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dvsgkit.io.extract import MARKER, UnsafeArchiveError, is_extracted, safe_extract

if TYPE_CHECKING:
    from conftest import Writers  # the `killable` fixture

MD5 = "0123456789abcdef0123456789abcdef"  # safe_extract trusts its caller to have verified it

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


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "root" / "extract"


def test_extracts_the_real_layout_and_records_a_marker(tmp_path: Path, dest: Path) -> None:
    archive = make_tar(tmp_path / "DvsGesture.tar.gz", GOOD)
    assert safe_extract(archive, dest, archive_md5=MD5) is True
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
    assert marker["archive_md5"] == MD5
    assert marker["files"]["DvsGesture/trials_to_train.txt"] == len(b"user01_natural.aedat\n")
    assert sorted(p.name for p in dest.iterdir()) == [MARKER, "DvsGesture"]  # no temp folder left
    # Complete and verified: a rerun does not even open the archive.
    archive.unlink()
    assert safe_extract(archive, dest, archive_md5=MD5) is False


@pytest.mark.parametrize(
    "damage",
    ["delete a file", "truncate a file", "other archive md5", "no marker", "bad marker"],
)
def test_incomplete_or_foreign_extraction_is_redone(
    tmp_path: Path, dest: Path, damage: str
) -> None:
    archive = make_tar(tmp_path / "DvsGesture.tar.gz", GOOD)
    safe_extract(archive, dest, archive_md5=MD5)
    aedat = dest / "DvsGesture" / "user01_natural.aedat"
    (dest / "DvsGesture" / "stale.txt").write_text("from an older extraction")
    md5 = MD5
    if damage == "delete a file":
        aedat.unlink()
    elif damage == "truncate a file":
        aedat.write_bytes(b"#!")
    elif damage == "other archive md5":
        md5 = "f" * 32
    elif damage == "no marker":
        (dest / MARKER).unlink()
    else:
        (dest / MARKER).write_text("{")
    assert not is_extracted(dest, md5)
    assert safe_extract(archive, dest, archive_md5=md5) is True
    assert aedat.read_bytes() == GOOD[1][2]
    assert not (dest / "DvsGesture" / "stale.txt").exists()  # the folder was replaced whole
    assert is_extracted(dest, md5)


# Extracts argv[1] into argv[2] and stops once every member is written, before the swap.
EXTRACTOR = f"""
import sys, time
from pathlib import Path
from dvsgkit.io import extract
real = extract._extract_into
def then_stop(*args):
    done = real(*args)
    print("writing", flush=True)
    time.sleep(600)
extract._extract_into = then_stop
extract.safe_extract(Path(sys.argv[1]), Path(sys.argv[2]), archive_md5="{MD5}")
"""


def test_leftovers_of_a_killed_run_are_cleared(
    tmp_path: Path, dest: Path, killable: Writers
) -> None:
    archive = make_tar(tmp_path / "DvsGesture.tar.gz", GOOD)
    dead = killable.killed(EXTRACTOR, archive, dest)
    (leftover,) = dest.iterdir()  # nothing under a real name
    assert leftover.name.startswith(f".DvsGesture.tar.gz.{dead}-")
    assert (leftover / "DvsGesture" / "user01_natural.aedat").is_file()
    assert not is_extracted(dest, MD5)
    live = killable.start(EXTRACTOR, archive, dest).pid  # alive while the next run extracts
    assert safe_extract(archive, dest, archive_md5=MD5) is True
    assert is_extracted(dest, MD5)
    hidden = sorted(p.name for p in dest.iterdir() if p.name != MARKER and p.name.startswith("."))
    assert len(hidden) == 1 and hidden[0].startswith(f".DvsGesture.tar.gz.{live}-")


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
        safe_extract(archive, dest, archive_md5=MD5)
    assert names in str(info.value)
    assert list(dest.iterdir()) == []  # no DvsGesture/, no marker, no temp folder
    assert [p.name for p in outside.iterdir()] == ["secret"]
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "root" / "evil.txt").exists()
    assert not Path("/tmp/dvsgkit-evil.txt").exists()


def test_refusal_keeps_a_previous_good_extraction(tmp_path: Path, dest: Path) -> None:
    safe_extract(make_tar(tmp_path / "good.tar.gz", GOOD), dest, archive_md5=MD5)
    bad = make_tar(tmp_path / "bad.tar.gz", [*GOOD, ("file", "../evil.txt", b"x")])
    with pytest.raises(UnsafeArchiveError, match=r"'\.\./evil\.txt'"):
        safe_extract(bad, dest, archive_md5="e" * 32)
    assert is_extracted(dest, MD5)
