"""events.h5 integrity: every chunk carries a Fletcher-32 checksum, and a seal records them all.

Two faults, two checks. A damaged file (flipped bits on disk or in transit) keeps its stored
checksums but not its data: HDF5 verifies a chunk's Fletcher-32 whenever it is read and fails
the read, which `read_columns` turns into one line naming the file, split, dataset and fix, and
`verify` finds by reading everything. A file changed after its build (a dataset rewritten by
hand) gets new, valid checksums: the seal, a sha256 of every chunk's stored checksum recorded
at build time on each dataset, no longer matches. Checking the seal reads 4 bytes per chunk, not
the data, so it is cheap enough for every up-to-date check.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.constants import NUM_CLASSES
from dvsgkit.errors import InputError
from dvsgkit.eventcache.layout import FIELDS

SEAL_ATTR = "fletcher32_seal"
VERIFY_BLOCK_EVENTS = 1 << 22  # events read at a time by `verify`: bounded memory


def fix_for(path: Path) -> str:
    return f"delete {path} and run 'dvsgkit events' to rebuild it"


def _chunks(dset: Any) -> list[tuple[int, int, int]]:
    """(first element, byte offset in the file, stored size) of every chunk, in element order."""
    found: list[tuple[int, int, int]] = []
    if hasattr(dset.id, "chunk_iter"):  # HDF5 >= 1.12.3: one call
        dset.id.chunk_iter(lambda c: found.append((c.chunk_offset[0], c.byte_offset, c.size)))
    else:
        for k in range(dset.id.get_num_chunks()):
            c = dset.id.get_chunk_info(k)
            found.append((c.chunk_offset[0], c.byte_offset, c.size))
    return sorted(found)


def dataset_seal(dset: Any, fd: int) -> str:
    """sha256 of a dataset's shape, type and every chunk's stored Fletcher-32 (the filter
    appends it to the chunk: its last 4 bytes), read from the file descriptor `fd`."""
    digest = hashlib.sha256(f"{dset.shape}|{dset.dtype.str}".encode())
    for first, byte, size in _chunks(dset):
        digest.update(struct.pack("<QQ", first, size))
        digest.update(os.pread(fd, 4, byte + size - 4))
    return digest.hexdigest()


def _datasets(f: Any, splits: tuple[str, ...]) -> list[tuple[str, Any]]:
    return [(f"{s}/{name}", dset) for s in splits for name, dset in sorted(f[s].items())]


def seal(f: Any, splits: tuple[str, ...]) -> None:
    """Record each dataset's seal as its SEAL_ATTR. `f` is open for writing; its data is final."""
    f.flush()  # chunks reach the file, where the checksums are read from
    fd = f.id.get_vfd_handle()  # the open file itself, not whatever its name points to now
    for _, dset in _datasets(f, splits):
        dset.attrs[SEAL_ATTR] = dataset_seal(dset, fd)


def changed_datasets(f: Any, splits: tuple[str, ...]) -> list[str]:
    """The datasets of the open file `f` whose seal is missing or no longer matches their
    chunks ("train/x"); a dataset stored without chunks (not written by dvsgkit) has none."""
    fd = f.id.get_vfd_handle()  # the open file itself, not whatever its name points to now
    changed = []
    for name, dset in _datasets(f, splits):
        recorded = dset.attrs.get(SEAL_ATTR)
        if recorded is None or dset.chunks is None or recorded != dataset_seal(dset, fd):
            changed.append(name)
    return changed


def check_sealed(f: Any, path: Path, splits: tuple[str, ...], sensor: tuple[int, int]) -> None:
    """ValueError naming the file, the changed dataset and the fix when a seal does not match;
    an event off the sensor (what breaks frame building) is named with its split and sample."""
    changed = changed_datasets(f, splits)
    if not changed:
        return
    for name in changed:
        split, column = name.split("/")
        if column in ("x", "y"):
            bad = _off_sensor(f[split], column, sensor)
            if bad is not None:
                event, value = bad
                sample = _sample_of(f[split]["offsets"][:], event)
                raise InputError(
                    f"{path}: {split} sample {sample} has {column} = {value} (event {event}), "
                    f"off the {sensor[1]}x{sensor[0]} sensor; {split}/{column} was changed after "
                    f"the build; {fix_for(path)}"
                )
    raise InputError(
        f"{path}: {', '.join(changed)} changed after the build (their Fletcher-32 checksums "
        f"differ from those sealed at build time); {fix_for(path)}"
    )


def _off_sensor(group: Any, column: str, sensor: tuple[int, int]) -> tuple[int, int] | None:
    """(event index, value) of the first x (or y) at or past the sensor's width (height)."""
    limit = sensor[1] if column == "x" else sensor[0]
    dset = group[column]
    for a in range(0, dset.shape[0], VERIFY_BLOCK_EVENTS):
        block = dset[a : a + VERIFY_BLOCK_EVENTS]
        over = np.flatnonzero(block >= limit)
        if len(over):
            return a + int(over[0]), int(block[over[0]])
    return None


def _sample_of(offsets: np.ndarray, event: int) -> int:
    return int(np.searchsorted(offsets, event, side="right")) - 1


def read_columns(
    group: Any,
    path: Path,
    fields: tuple[str, ...],
    a: int,
    b: int,
    *,
    sensor: tuple[int, int] | None = None,
    offsets: np.ndarray | None = None,
    first_sample: int = 0,
) -> dict[str, np.ndarray]:
    """Events [a, b) of a split group's `fields`. Fewer events than that, a chunk failing its
    checksum, or (given the `sensor` (H, W)) an x or y off the sensor or a polarity other than
    0/1, becomes one ValueError naming the file, split, dataset and fix; the sample too when
    the samples' `offsets` (absolute event indices, sample `first_sample` first) are given."""
    split = group.name.strip("/")
    out = {}
    for name in fields:
        try:
            out[name] = group[name][a:b]
        except OSError as exc:
            raise InputError(
                f"{path}: {split}/{name} events [{a}, {b}) cannot be read ({exc}: a chunk fails "
                f"its Fletcher-32 checksum, the file is damaged); {fix_for(path)}"
            ) from exc
        if len(out[name]) != b - a:  # h5py returns what there is of a slice past the end
            raise InputError(
                f"{path}: {split}/{name} holds {group[name].shape[0]} events, fewer than the {b} "
                f"that events [{a}, {b}) need (the file was changed after its build); "
                f"{fix_for(path)}"
            )
        limit = None if sensor is None else {"x": sensor[1], "y": sensor[0], "p": 2}.get(name)
        if limit is not None and len(out[name]) and int(out[name].max()) >= limit:
            k = int(np.argmax(out[name] >= limit))
            where = f"event {a + k}"
            if offsets is not None:
                where = f"sample {first_sample + _sample_of(offsets, a + k)}, {where}"
            off = "a polarity other than 0 or 1" if name == "p" else (
                f"off the {sensor[1]}x{sensor[0]} sensor")  # fmt: skip
            raise InputError(
                f"{path}: {split} {where} has {name} = {int(out[name][k])}, {off} (the file "
                f"was changed after its build); {fix_for(path)}"
            )
    return out


def verify(f: Any, path: Path, splits: tuple[str, ...], sensor: tuple[int, int]) -> list[str]:
    """Read every dataset of `splits` in full; return what is damaged, one line each (empty:
    sound). Checks each chunk's Fletcher-32 (by reading it), the seals, offsets against the
    event columns, labels 0..10, pixels on the sensor and polarities 0/1."""
    problems = []
    for split in splits:
        group = f[split]
        try:
            offsets = group["offsets"][:]
            n = group["t"].shape[0]
            if offsets[0] != 0 or offsets[-1] != n or (np.diff(offsets) < 0).any():
                problems.append(f"{split}/offsets do not partition the {n} events")
        except OSError:
            offsets = None  # reported below, with the other unreadable chunks
        for name, dset in sorted(group.items()):
            step = VERIFY_BLOCK_EVENTS
            for a in range(0, dset.shape[0], step):
                b = min(a + step, dset.shape[0])
                try:
                    block = dset[a:b]
                except OSError:
                    where = f"{split}/{name}[{a}:{b}]"
                    if offsets is not None and name in FIELDS:
                        first, last = _sample_of(offsets, a), _sample_of(offsets, b - 1)
                        where += f" (samples {first}..{last})"
                    problems.append(f"{where} fails its Fletcher-32 checksum (damaged)")
                    continue
                problems += _values(split, name, block, a, sensor, offsets)
    problems += [
        f"{name} changed after the build (its seal does not match)"
        for name in changed_datasets(f, splits)
    ]
    return [f"{path}: {p}" for p in problems]


def _values(
    split: str,
    name: str,
    block: np.ndarray,
    a: int,
    sensor: tuple[int, int],
    offsets: np.ndarray | None,
) -> list[str]:
    """The first out-of-range value of one block of a column, as a problem line."""
    limit = {"x": sensor[1], "y": sensor[0], "p": 2, "labels": NUM_CLASSES}.get(name)
    if limit is None or not len(block):
        return []
    over = np.flatnonzero(block >= limit)
    if not len(over):
        return []
    k = a + int(over[0])
    sample = ""
    if offsets is not None and name != "labels":
        sample = f" (sample {_sample_of(offsets, k)})"
    return [f"{split}/{name}[{k}] = {int(block[k - a])}{sample}, expected < {limit}"]
