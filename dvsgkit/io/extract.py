"""Safe tar extraction: refuse hostile members, build in a temp folder, swap in, record a marker."""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from dvsgkit import __version__
from dvsgkit.errors import InputError, storage_errors
from dvsgkit.fs import require_free, scratch_dir, swap_in, sweep, write_text
from dvsgkit.fs.lock import build_lock, lock_of, to_stderr
from dvsgkit.io.download import SPACE_FIX, byte_bar

MARKER = ".dvsgkit-extracted.json"  # written last: its presence means the extraction completed
_DRIVE = re.compile(r"^[A-Za-z]:")
# What to do about an archive that its verified md5 no longer describes (edited in place with
# its size and mtime kept, which the md5 cache trusts) or that cannot be read.
RECHECK = "check it with 'dvsgkit download --rehash', or delete it and download it again"


class ArchiveError(InputError):
    """An archive that cannot be extracted: damaged, or with hostile members. The message names
    the archive and the fix; nothing was extracted."""


class UnsafeArchiveError(ArchiveError):
    """An archive member would land outside the target folder, or is not a plain file/dir/link."""


@dataclass
class _Extracted:
    """What an extraction produced, relative to the target folder (the marker's content)."""

    files: dict[str, int] = field(default_factory=dict)  # POSIX path -> size in bytes
    dirs: list[str] = field(default_factory=list)
    symlinks: list[str] = field(default_factory=list)

    def tops(self) -> list[str]:
        return sorted({p.split("/")[0] for p in [*self.files, *self.dirs, *self.symlinks]})


def _refuse(archive: Path, member: tarfile.TarInfo, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"{archive}: refusing member {member.name!r}: {why}; nothing was extracted "
        "(the archive is damaged or not the DvsGesture archive)"
    )


def member_path(member: tarfile.TarInfo, archive: Path) -> PurePosixPath | None:
    """The member's path relative to the target, or None for the archive's own "." entry.

    Refuses absolute names (POSIX, Windows drive or UNC) and any ".." component."""
    name = member.name
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise _refuse(archive, member, "absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts or any(".." in p.split("\\") for p in parts):
        raise _refuse(archive, member, "'..' in its path")
    return PurePosixPath(*parts) if parts else None


def _inside(path: str) -> bool:
    """Whether a normalised relative POSIX path stays inside the target."""
    return path != ".." and not path.startswith("../") and not path.startswith("/")


def _no_symlink_on_the_way(
    root: Path, rel: PurePosixPath, archive: Path, member: tarfile.TarInfo
) -> None:
    """Refuse writing through a symlink an earlier member created (the classic tar escape)."""
    here = root
    for part in rel.parts[:-1]:
        here = here / part
        if here.is_symlink():
            raise _refuse(archive, member, f"its path goes through the symlink {part!r}")


def _clear(target: Path) -> None:
    """Remove a file or link a later member of the same name replaces (never write through it)."""
    if target.is_symlink() or target.is_file():
        target.unlink()


def _require_room(archive: Path, root: Path, key: str, size: int) -> None:
    """StorageError, before writing, unless the member `key` (`size` bytes) fits the free space
    of the extraction folder `root` (a temporary folder inside the target)."""
    require_free(
        root.parent,
        size,
        root.parent / key,
        f"{SPACE_FIX}; if that size is absurd, {archive.name} is damaged: {RECHECK}",
    )


def _extract_into(archive: Path, root: Path, progress: bool, archive_md5: str) -> _Extracted:
    """Stream `archive` into the empty folder `root`, checking each member before writing it,
    and the md5 of every byte read against `archive_md5` at the end. An archive that cannot be
    read raises ArchiveError naming it, the byte reached and the fix."""
    done = _Extracted()
    digest = hashlib.md5()
    size = archive.stat().st_size
    with open(archive, "rb") as raw, byte_bar(size, f"extract {archive.name}", progress) as bar:

        class _Counting:
            """Feeds the progress bar and the md5 with the compressed bytes tarfile reads."""

            def read(self, n: int = -1) -> bytes:
                block = raw.read(n)
                bar.update(len(block))
                digest.update(block)
                return block

        try:
            _members_into(archive, root, _Counting(), done)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            cause = " ".join(str(exc).split()) or type(exc).__name__  # one line
            raise ArchiveError(
                f"{archive}: cannot read the archive after {raw.tell():,} of {size:,} bytes "
                f"({cause}): it is damaged or changed since its md5 was checked; nothing was "
                f"extracted: {RECHECK}"
            ) from exc
        while block := raw.read(4 << 20):  # what tarfile left unread (end-of-archive padding)
            digest.update(block)
    if digest.hexdigest() != archive_md5:
        raise ArchiveError(
            f"{archive}: its md5 is {digest.hexdigest()} while extracting, not the verified "
            f"{archive_md5}: it changed since its md5 was checked; nothing was extracted: "
            f"{RECHECK}"
        )
    # Links checked one by one can still chain outside (a -> d/l/.. where d/l -> ..): resolve all.
    real_root = root.resolve()
    for key in done.symlinks:
        real = (root / key).resolve()
        if real != real_root and real_root not in real.parents:
            raise UnsafeArchiveError(
                f"{archive}: refusing symlink {key!r}: it resolves to {real}, outside the target"
            )
    return done


def _members_into(archive: Path, root: Path, stream: object, done: _Extracted) -> None:
    """Extract the members of the tar `stream` into `root`, recording them in `done`."""
    # Stream mode ("r|*"): one pass over the 3 GB gzip, any compression tarfile knows.
    with tarfile.open(fileobj=stream, mode="r|*") as tar:  # type: ignore[call-overload]
        for member in tar:
            rel = member_path(member, archive)
            if rel is None:
                continue
            _no_symlink_on_the_way(root, rel, archive, member)
            target = root.joinpath(*rel.parts)
            key = rel.as_posix()
            if member.isdir():
                if target.is_symlink() or (target.exists() and not target.is_dir()):
                    raise _refuse(archive, member, "a directory over an earlier file or link")
                target.mkdir(parents=True, exist_ok=True)
                done.dirs.append(key)
                continue
            if target.is_dir() and not target.is_symlink():
                raise _refuse(archive, member, "a non-directory over an earlier directory")
            # A later member of the same name replaces the earlier one.
            done.files.pop(key, None)
            if key in done.symlinks:
                done.symlinks.remove(key)
            if member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                _clear(target)
                src = tar.extractfile(member)
                if src is None:
                    raise _refuse(archive, member, "a regular file without data")
                _require_room(archive, root, key, member.size)
                with src, open(target, "xb") as out:
                    shutil.copyfileobj(src, out, 4 << 20)
                target.chmod(0o755 if member.mode & 0o100 else 0o644)
                os.utime(target, (member.mtime, member.mtime))
                done.files[key] = member.size
            elif member.issym():
                link = member.linkname
                resolved = posixpath.normpath(posixpath.join(rel.parent.as_posix(), link))
                if link.startswith(("/", "\\")) or _DRIVE.match(link) or not _inside(resolved):
                    raise _refuse(archive, member, f"symlink to {link!r}, outside the target")
                target.parent.mkdir(parents=True, exist_ok=True)
                _clear(target)
                os.symlink(link, target)
                done.symlinks.append(key)
            elif member.islnk():
                linked = posixpath.normpath(member.linkname)
                source = root / linked
                if (
                    member.linkname.startswith(("/", "\\"))
                    or not _inside(linked)
                    or linked not in done.files  # only regular files written earlier
                    or source.is_symlink()
                ):
                    raise _refuse(
                        archive,
                        member,
                        f"hard link to {member.linkname!r}, not a file extracted before it",
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                _clear(target)
                _require_room(archive, root, key, done.files[linked])
                shutil.copyfile(source, target)  # a copy: no inode shared with anything
                done.files[key] = done.files[linked]
            else:
                kind = {
                    tarfile.CHRTYPE: "character device",
                    tarfile.BLKTYPE: "block device",
                    tarfile.FIFOTYPE: "FIFO",
                }.get(member.type, f"member type {member.type!r}")
                raise _refuse(archive, member, f"{kind}, only files, dirs and links allowed")


def is_extracted(dest: Path, archive_md5: str) -> bool:
    """True when `dest` holds a complete extraction of the archive with md5 `archive_md5`.

    Checks the marker's md5 and that every recorded file exists with its recorded size (a stat
    per member, no hashing): a deleted or truncated file triggers a fresh extraction."""
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (FileNotFoundError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("archive_md5") != archive_md5:
        return False
    try:
        for rel, size in marker["files"].items():
            st = os.lstat(dest / rel)
            if not (os.path.isfile(dest / rel) and st.st_size == size):
                return False
        return all((dest / d).is_dir() for d in marker["dirs"]) and all(
            (dest / s).is_symlink() for s in marker["symlinks"]
        )
    except (OSError, KeyError, AttributeError, TypeError):
        return False


def safe_extract(archive: Path, dest: Path, *, archive_md5: str, progress: bool = False) -> bool:
    """Extract `archive` (verified to have md5 `archive_md5`) into `dest`.

    Returns False when `dest` already holds a complete extraction of it (see `is_extracted`),
    True after extracting. Members go to a temporary folder inside `dest`; only when every member
    passed the checks, and the bytes read still have md5 `archive_md5`, are the top-level
    entries renamed into place (replacing stale ones), and the marker is written last.

    Refuses absolute paths, '..', links leading outside, writes through links, and device/FIFO
    members (`UnsafeArchiveError` naming the member); an archive that cannot be read or whose
    md5 changed (`ArchiveError`); a member larger than the free space, before writing it, and a
    full or read-only disk (`StorageError` naming the path). Nothing is left half-extracted."""
    archive, dest = Path(archive), Path(dest)
    if is_extracted(dest, archive_md5):
        return False
    with storage_errors(dest, f"extract {archive.name} into", SPACE_FIX):
        dest.mkdir(parents=True, exist_ok=True)
    with (
        storage_errors(dest, f"extract {archive.name} into", SPACE_FIX),
        build_lock(lock_of(dest), what=str(dest), doing="writing", notify=to_stderr),
    ):
        sweep(dest)  # what killed runs left; never part of a result
        with scratch_dir(dest / archive.name) as tree:
            done = _extract_into(archive, tree, progress, archive_md5)
            # From here dest is in flux: drop the old marker first so a crash reads as incomplete.
            (dest / MARKER).unlink(missing_ok=True)
            for top in done.tops():
                swap_in(tree / top, dest / top)  # a stale one is moved aside, then deleted
            marker = {
                "archive": archive.name,
                "archive_md5": archive_md5,
                "dvsgkit_version": __version__,
                "files": done.files,
                "dirs": done.dirs,
                "symlinks": done.symlinks,
            }
            write_text(dest / MARKER, json.dumps(marker, indent=1))
    return True
