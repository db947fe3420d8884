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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.constants import NUM_CLASSES, SENSOR_SIZE
from dvsgkit.errors import InputError
from dvsgkit.eventcache.layout import FIELDS

SEAL_ATTR = "fletcher32_seal"
BLOCK_EVENTS = 1 << 22  # events read at a time by a full scan: bounded memory
# The values a column may hold: pixels on the sensor (H, W), polarity 0/1, classes 0..10.
LIMITS = {"x": SENSOR_SIZE[1], "y": SENSOR_SIZE[0], "p": 2, "labels": NUM_CLASSES}


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
    fd = f.id.get_vfd_handle()
    return [
        name
        for name, dset in _datasets(f, splits)
        if dset.chunks is None or dset.attrs.get(SEAL_ATTR) != dataset_seal(dset, fd)
    ]


def _over(name: str, block: np.ndarray) -> int | None:
    """Index of the first value of column `name` beyond its LIMITS, None if all are within."""
    over = np.flatnonzero(block >= LIMITS[name]) if name in LIMITS and len(block) else []
    return int(over[0]) if len(over) else None


def _blocks(dset: Any) -> Iterator[tuple[int, int]]:
    for a in range(0, dset.shape[0], BLOCK_EVENTS):
        yield a, min(a + BLOCK_EVENTS, dset.shape[0])


def _sample_of(offsets: np.ndarray, event: int) -> int:
    return int(np.searchsorted(offsets, event, side="right")) - 1


def check_sealed(f: Any, path: Path, splits: tuple[str, ...]) -> None:
    """InputError naming the file, the changed dataset and the fix when a seal does not match;
    an event off the sensor (what breaks frame building) is named with its split and sample."""
    changed = changed_datasets(f, splits)
    for name in changed:
        split, column = name.split("/")
        dset = f[name]
        for a, b in _blocks(dset) if column in ("x", "y") else ():
            if (k := _over(column, block := dset[a:b])) is not None:
                sample = _sample_of(f[split]["offsets"][:], a + k)
                raise InputError(
                    f"{path}: {split} sample {sample} has {column} = {int(block[k])} (event "
                    f"{a + k}), off the {SENSOR_SIZE[1]}x{SENSOR_SIZE[0]} sensor; {name} was "
                    f"changed after the build; {fix_for(path)}"
                )
    if changed:
        raise InputError(
            f"{path}: {', '.join(changed)} changed after the build (their Fletcher-32 checksums "
            f"differ from those sealed at build time); {fix_for(path)}"
        )


def read_columns(
    group: Any, path: Path, fields: tuple[str, ...], a: int, b: int, *,
    offsets: np.ndarray | None = None, first_sample: int = 0,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Events [a, b) of a split group's `fields`. Fewer events than that, a chunk failing its
    checksum, a value beyond LIMITS (a pixel off the sensor, a polarity other than 0/1): one
    InputError naming the file, split, dataset and fix, and the sample too when the samples'
    `offsets` (absolute event indices, sample `first_sample` first) are given."""
    split = group.name.strip("/")
    out = {}
    for name in fields:
        try:
            out[name] = column = group[name][a:b]
        except OSError as exc:
            raise InputError(
                f"{path}: {split}/{name} events [{a}, {b}) cannot be read ({exc}: a chunk fails "
                f"its Fletcher-32 checksum, the file is damaged); {fix_for(path)}"
            ) from exc
        if len(column) != b - a:  # h5py returns what there is of a slice past the end
            raise InputError(
                f"{path}: {split}/{name} holds {group[name].shape[0]} events, fewer than the {b} "
                f"that events [{a}, {b}) need (the file was changed after its build); "
                f"{fix_for(path)}"
            )
        if (k := _over(name, column)) is not None:
            where = f"event {a + k}"
            if offsets is not None:
                where = f"sample {first_sample + _sample_of(offsets, a + k)}, {where}"
            off = "a polarity other than 0 or 1" if name == "p" else (
                f"off the {SENSOR_SIZE[1]}x{SENSOR_SIZE[0]} sensor")  # fmt: skip
            raise InputError(
                f"{path}: {split} {where} has {name} = {int(column[k])}, {off} (the file "
                f"was changed after its build); {fix_for(path)}"
            )
    return out


def verify(f: Any, path: Path, splits: tuple[str, ...]) -> list[str]:
    """Read every dataset of `splits` in full; return what is damaged, one line each (empty:
    sound): chunks failing their Fletcher-32, offsets that do not partition the events, values
    beyond LIMITS, datasets whose seal does not match."""
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
            events = offsets is not None and name in FIELDS  # samples can be named
            for a, b in _blocks(dset):
                try:
                    block = dset[a:b]
                except OSError:
                    where = f"{split}/{name}[{a}:{b}]"
                    if events:
                        where += (
                            f" (samples {_sample_of(offsets, a)}..{_sample_of(offsets, b - 1)})"
                        )
                    problems.append(f"{where} fails its Fletcher-32 checksum (damaged)")
                    continue
                if (k := _over(name, block)) is not None:
                    sample = f" (sample {_sample_of(offsets, a + k)})" if events else ""
                    problems.append(f"{split}/{name}[{a + k}] = {int(block[k])}{sample}, "
                                    f"expected < {LIMITS[name]}")  # fmt: skip
    problems += [f"{name} changed after the build (its seal does not match)"
                 for name in changed_datasets(f, splits)]  # fmt: skip
    return [f"{path}: {p}" for p in problems]
