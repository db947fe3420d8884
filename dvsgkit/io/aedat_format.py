"""The AEDAT 3.1 layout (docs/reference.md §2): the ASCII header, the 28-byte packet headers, the
bits of a polarity event, and the walk over the packets that finds the polarity payloads.
Decoding: `dvsgkit.io.aedat`; writing: `dvsgkit.io.aedat_writer`."""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.errors import InputError

POLARITY_EVENT = 1  # eventType of polarity events
POLARITY_EVENT_SIZE = 8  # uint32 data, uint32 timestamp
PACKET_HEADER = struct.Struct("<HHIIIIII")  # 28 bytes, see docs/reference.md §2
END_HEADER = "#!END-HEADER"
_VERSION_LINE = re.compile(rb"#!AER-DAT3\.(\d+)\r?\n")
# libcaer's polarity layout: valid bit 0, polarity bit 1, y bits 2..16, x bits 17..31, masked
# with 0x7FFF like libcaer and SpikingJelly 0.0.0.0.14's load_aedat_v3. The dataset's README
# writes 0x1FFF; the two agree whenever x, y < 8192, and the event cache rejects anything off
# the 128 x 128 sensor either way.
X_SHIFT, Y_SHIFT, P_SHIFT, XY_MASK = 17, 2, 1, 0x7FFF
TS_MASK = 0x7FFFFFFF  # a packet's timestamps hold 31 bits; eventTSOverflow holds the rest
# A walk stops after this much of the file (plus its last packet), so that a file of few events
# (or none: zero-filled) is still read with a window's pages mapped.
WINDOW_BYTES = 64 << 20
# A packet row found by the walk: (payload offset, eventNumber, eventCapacity, eventTSOverflow).
Packet = tuple[int, int, int, int]


class AedatError(InputError):
    """A malformed AEDAT file; the message names the file and the byte offset."""


@dataclass(frozen=True)
class AedatHeader:
    """The ASCII header of an AEDAT 3.x file."""

    version: str  # "3.1"
    lines: tuple[str, ...]  # every header line without its line ending, first and last included
    data_offset: int  # byte offset of the first packet

    def field(self, name: str) -> str | None:
        """The value of header line `#<name>: value` (e.g. "Start-Time", "Source 1"), or None."""
        prefix = f"#{name}:"
        return next((ln[len(prefix) :].strip() for ln in self.lines if ln.startswith(prefix)), None)


def open_map(f: Any, path: Path) -> mmap.mmap:
    """The whole open file `f` mapped read-only; AedatError for an empty file (no map)."""
    if os.fstat(f.fileno()).st_size == 0:
        raise AedatError(f"{path}: empty file at byte 0, expected '#!AER-DAT3.1'")
    return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def parse_header(buf: bytes | mmap.mmap, path: Path) -> AedatHeader:
    """The header at the start of `buf` (a file's bytes or map); AedatError naming the byte."""
    match = _VERSION_LINE.match(buf, 0)
    if match is None:
        first = bytes(buf[:40]).split(b"\n", 1)[0]
        raise AedatError(
            f"{path}: not an AEDAT 3.x file: byte 0 starts with {first!r}, expected '#!AER-DAT3.1'"
        )
    lines = []
    pos = 0
    while not lines or lines[-1] != END_HEADER:
        end = buf.find(b"\n", pos)
        if end < 0 or buf[pos : pos + 1] != b"#":
            raise AedatError(
                f"{path}: no {END_HEADER} line: the header ends at byte {pos} "
                f"(file size {len(buf)}); the file is truncated or not AEDAT 3.1"
            )
        lines.append(bytes(buf[pos:end]).rstrip(b"\r").decode("ascii", errors="replace"))
        pos = end + 1
    return AedatHeader(f"3.{match.group(1).decode()}", tuple(lines), pos)


def read_header(path: str | os.PathLike[str]) -> AedatHeader:
    """Parse the header of an AEDAT 3.x file (reads only as far as `#!END-HEADER`)."""
    path = Path(path)
    with open(path, "rb") as f, open_map(f, path) as mm:
        return parse_header(mm, path)


def walk_packets(
    mm: mmap.mmap, pos: int, path: Path, max_events: int | None, max_bytes: int | None = None
) -> tuple[list[Packet], int]:
    """Walk the packet headers from byte `pos` to the end of the file, or until the polarity
    packets seen hold `max_events` events, or the walk has passed `max_bytes` of the file:
    (the polarity packets holding events, the byte offset where the walk stopped). Other
    packet types are skipped by their declared size; one Python step per packet (thousands of
    events), except over runs of empty packets (`_skip_empty`)."""
    size = len(mm)
    stop = size if max_bytes is None else min(size, pos + max_bytes)
    rows: list[Packet] = []
    events = 0
    while pos < stop and (max_events is None or events < max_events):
        if size - pos < PACKET_HEADER.size:
            raise AedatError(
                f"{path}: truncated packet header at byte {pos}: {size - pos} bytes left, "
                f"{PACKET_HEADER.size} needed"
            )
        etype, _src, esize, _tsoff, overflow, capacity, number, _ = PACKET_HEADER.unpack_from(
            mm, pos
        )
        payload = capacity * esize
        if payload == 0 and _nothing_to_check(etype, esize, number):
            pos = _skip_empty(mm, pos + PACKET_HEADER.size, stop)
            continue
        if pos + PACKET_HEADER.size + payload > size:
            raise AedatError(
                f"{path}: packet at byte {pos} declares {capacity} x {esize} bytes of events "
                f"but only {size - pos - PACKET_HEADER.size} bytes remain (truncated file)"
            )
        if etype == POLARITY_EVENT:
            if esize != POLARITY_EVENT_SIZE:
                raise AedatError(
                    f"{path}: polarity packet at byte {pos} has eventSize {esize}, "
                    f"expected {POLARITY_EVENT_SIZE}"
                )
            if number > capacity:
                raise AedatError(
                    f"{path}: packet at byte {pos} has eventNumber {number} > "
                    f"eventCapacity {capacity}"
                )
            if number:
                rows.append((pos + PACKET_HEADER.size, number, capacity, overflow))
                events += number
        pos += PACKET_HEADER.size + payload
    return rows, pos


def _nothing_to_check(etype: Any, esize: Any, number: Any) -> Any:
    """Whether an empty packet passes `walk_packets`' checks: any type but polarity, or polarity
    with eventSize 8 and eventNumber 0. Python ints or numpy arrays of them."""
    return (etype != POLARITY_EVENT) | ((esize == POLARITY_EVENT_SIZE) & (number == 0))


def _skip_empty(mm: mmap.mmap, pos: int, stop: int) -> int:
    """The offset of the first packet header at or after `pos` that is not an empty packet
    passing the checks, or after the last whole header before `stop`. Headers are read as
    [n, 7] uint32 arrays of 16, 256, ... up to 65,536 (1.8 MB) at a time, so a zero-filled
    stretch (a header of zeros declares no events) costs one numpy step per 1.8 MB."""
    n = 16
    while True:
        n = min(n, (stop - pos) // PACKET_HEADER.size, 1 << 16)
        if n <= 0:
            return pos
        # [n, 7] words: type | source << 16, size, TS offset, overflow, capacity, number, valid
        head = np.frombuffer(mm, "<u4", count=7 * n, offset=pos).reshape(n, 7)
        etype, esize, capacity, number = head[:, 0] & 0xFFFF, head[:, 1], head[:, 4], head[:, 5]
        empty = ((capacity == 0) | (esize == 0)) & _nothing_to_check(etype, esize, number)
        del head, etype, esize, capacity, number  # no export of the map outlives the step
        k = n if empty.all() else int(np.argmin(empty))  # the first header that is not
        pos += k * PACKET_HEADER.size
        if k < n:
            return pos
        n *= 16


def release(mm: mmap.mmap, start: int, end: int) -> None:
    """Unmap the pages of [start, end) that are done with, so that the resident size stays one
    chunk however large the file (they stay in the page cache)."""
    if hasattr(mmap, "MADV_DONTNEED"):  # Linux and most Unixes
        lo, hi = start // mmap.PAGESIZE * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
        if hi > lo:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
