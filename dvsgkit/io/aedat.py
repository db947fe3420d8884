"""Read AEDAT 3.1 files (the DVS128 Gesture recordings) in bulk, with numpy; the format's
constants. Writing: `dvsgkit.io.aedat_writer`."""

from __future__ import annotations

import mmap
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.constants import EVENT_DTYPE
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
DEFAULT_CHUNK_EVENTS = 1 << 22  # ~4 M events per chunk: ~32 MB of file, 48 MB decoded (t, data)
# The window: a chunk's walk stops after this much of the file (plus its last packet), so that
# a file of few events (or none: zero-filled) is still read with a window's pages mapped.
WINDOW_BYTES = 64 << 20


class AedatError(InputError):
    """A malformed AEDAT file; the message names the file and the byte offset."""


@dataclass(frozen=True)
class AedatHeader:
    """The ASCII header of an AEDAT 3.x file."""

    version: str  # "3.1"
    lines: tuple[str, ...]  # every header line without its line ending, first and last included
    data_offset: int  # byte offset of the first packet

    def field(self, name: str) -> str | None:
        """The value of header line `#<name>: value` (e.g. "Start-Time"), or None."""
        prefix = f"#{name}:"
        for line in self.lines:
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        return None

    @property
    def source(self) -> str | None:
        """The recording device, e.g. "DVS128" (from `#Source 1: DVS128`)."""
        for line in self.lines:
            if line.startswith("#Source ") and ":" in line:
                return line.split(":", 1)[1].strip()
        return None

    @property
    def start_time(self) -> str | None:
        """The `#Start-Time:` value as written (free text in this dataset)."""
        return self.field("Start-Time")


def _parse_header(buf: bytes | mmap.mmap, path: Path) -> AedatHeader:
    match = _VERSION_LINE.match(buf, 0)
    if match is None:
        first = bytes(buf[:40]).split(b"\n", 1)[0]
        raise AedatError(
            f"{path}: not an AEDAT 3.x file: byte 0 starts with {first!r}, expected '#!AER-DAT3.1'"
        )
    lines = []
    pos = 0
    while True:
        end = buf.find(b"\n", pos)
        if end < 0 or buf[pos : pos + 1] != b"#":
            raise AedatError(
                f"{path}: no {END_HEADER} line: the header ends at byte {pos} "
                f"(file size {len(buf)}); the file is truncated or not AEDAT 3.1"
            )
        line = bytes(buf[pos:end]).rstrip(b"\r").decode("ascii", errors="replace")
        lines.append(line)
        pos = end + 1
        if line == END_HEADER:
            break
    return AedatHeader(f"3.{match.group(1).decode()}", tuple(lines), pos)


def read_header(path: str | os.PathLike[str]) -> AedatHeader:
    """Parse the header of an AEDAT 3.x file (reads only as far as `#!END-HEADER`)."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise AedatError(f"{path}: empty file at byte 0, expected '#!AER-DAT3.1'")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _parse_header(mm, path)


def _walk(
    mm: mmap.mmap, pos: int, path: Path, max_events: int | None, max_bytes: int | None = None
) -> tuple[list[tuple[int, int, int, int]], int]:
    """Walk the packet headers from byte `pos` until the end of the file, until the polarity
    packets seen hold at least `max_events` events, or until the walk has passed `max_bytes` of
    the file. Return (polarity packets as (payload offset, eventNumber, eventCapacity,
    eventTSOverflow), byte offset where the walk stopped). Other packet types are skipped by
    their declared size. One Python step per packet (packets hold thousands of events), except
    over runs of empty packets, which `_skip_empty` steps over in bulk."""
    size = len(mm)
    stop = size if max_bytes is None else min(size, pos + max_bytes)
    rows = []
    events = 0
    unpack = PACKET_HEADER.unpack_from
    while pos < stop and (max_events is None or events < max_events):
        if size - pos < PACKET_HEADER.size:
            raise AedatError(
                f"{path}: truncated packet header at byte {pos}: {size - pos} bytes left, "
                f"{PACKET_HEADER.size} needed"
            )
        etype, _src, esize, _tsoff, overflow, capacity, number, _valid = unpack(mm, pos)
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
    """Whether an empty packet (eventCapacity or eventSize 0) passes `_walk`'s checks: any type
    but polarity, or a polarity packet with eventSize 8 and eventNumber 0. Python ints or numpy
    arrays of them."""
    return (etype != POLARITY_EVENT) | ((esize == POLARITY_EVENT_SIZE) & (number == 0))


def _skip_empty(mm: mmap.mmap, pos: int, stop: int) -> int:
    """The byte offset of the first packet header at or after `pos` that is not an empty packet
    passing `_walk`'s checks or, when every whole header before `stop` is one, the offset after
    the last of them. Headers are read as [n, 7] uint32 arrays of 16, then 256, ... up to 65,536
    at a time (1.8 MB), so a zero-filled stretch (a 28-byte header of zeros declares
    eventCapacity 0, eventSize 0) costs one numpy step per 1.8 MB, not one Python step per 28
    bytes."""
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


def _polarity_packets(
    mm: mmap.mmap, start: int, path: Path, max_events: int | None = None
) -> tuple[np.ndarray, int]:
    """`_walk` as arrays: ([K, 3] int64 rows (payload offset, eventNumber, eventTSOverflow) of
    the polarity packets, byte offset where the walk stopped)."""
    rows, pos = _walk(mm, start, path, max_events)
    packets = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return packets[:, [0, 1, 3]], pos


def unpack_data(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Polarity data words (uint32) -> x uint16, y uint16, p uint8."""
    x = np.empty(len(data), np.uint16)
    y = np.empty(len(data), np.uint16)
    p = np.empty(len(data), np.uint8)
    unpack_into(data, x, y, p)
    return x, y, p


def unpack_into(data: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray) -> None:
    """Decode polarity data words (uint32 [n]) into the unsigned integer arrays x, y, p [n]
    (one pass each, no temporaries). x and y need 15 bits to be exact in general; narrower
    arrays (uint8) are exact only when every x and y fits them: check that first (`max_xy`)."""
    # The casts keep the low bits: x is the top 15 bits of the word, so it needs no mask.
    np.right_shift(data, X_SHIFT, out=x, casting="unsafe")
    np.right_shift(data, Y_SHIFT, out=y, casting="unsafe")
    if y.dtype.itemsize > 1:  # a uint8 y keeps 8 of its 15 bits: nothing of x to mask off
        np.bitwise_and(y, XY_MASK, out=y)
    np.right_shift(data, P_SHIFT, out=p, casting="unsafe")
    np.bitwise_and(p, 1, out=p)


def max_xy(data: np.ndarray) -> tuple[int, int]:
    """(largest x, largest y) of polarity data words (uint32), or (-1, -1) when there are none."""
    if len(data) == 0:
        return -1, -1
    x, y, _ = unpack_data(data)
    return int(x.max()), int(y.max())


def xy_bound(data: np.ndarray) -> tuple[int, int]:
    """Upper bounds of x and y over polarity data words, in one cheap pass: the bitwise OR of
    all x and of all y (>= the maxima, and < 2**k exactly when every value is < 2**k)."""
    if len(data) == 0:
        return 0, 0
    word = int(np.bitwise_or.reduce(data))
    return (word >> X_SHIFT) & XY_MASK, (word >> Y_SHIFT) & XY_MASK


def decode_words(t: np.ndarray, data: np.ndarray) -> np.ndarray:
    """(t int64, data uint32) as yielded by `iter_words` -> EVENT_DTYPE [n]."""
    out = np.empty(len(t), dtype=EVENT_DTYPE)
    out["t"] = t
    out["x"], out["y"], out["p"] = unpack_data(data)
    return out


class ReadBuffers:
    """Memory that `iter_words` decodes into, kept between files: pass one instance to
    successive reads (one read at a time) so that each chunk lands in pages that are already
    mapped, instead of fresh ones the kernel must fault in and zero for every file."""

    def __init__(self) -> None:
        self.t = np.empty(0, np.int64)
        self.data = np.empty(0, np.uint32)
        self.raw = bytearray(0)  # payloads gathered from packets of varying sizes

    def reserve(self, events: int) -> None:
        """Grow (never shrink) to hold `events` decoded events."""
        if len(self.t) < events:
            self.t = np.empty(events, np.int64)
            self.data = np.empty(events, np.uint32)

    def reserve_raw(self, size: int) -> None:
        if len(self.raw) < size:
            self.raw = bytearray(size)


def iter_words(
    path: str | os.PathLike[str],
    *,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    digest: Any = None,
    buffers: ReadBuffers | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The polarity events of an AEDAT 3.x file in file order, as chunks of (t int64 µs [n],
    data uint32 [n]) of at most about `chunk_events` events (a packet is never split): the
    undecoded form, cheapest to cut (see `unpack_into`). Memory stays a window plus one chunk
    whatever the file size: the file is memory-mapped, a chunk's packets are found within at
    most `WINDOW_BYTES` of it (a file with few events gives smaller chunks), and its pages are
    unmapped once the chunk is decoded (they stay in the page cache). Runs of empty packets (a
    zero-filled stretch reads as 28-byte headers declaring no events) are stepped over with
    numpy, at several GB/s, not one Python step per packet.

    A chunk's arrays live in `buffers` (fresh ones if None) and are overwritten by the next
    chunk: copy what you keep. `digest` (a hashlib object), if given, is updated with every
    byte of the file in order, so that one pass over the file both hashes and decodes it.

    Each polarity packet contributes its first `eventNumber` slots (slots beyond it are unused
    capacity), minus the events whose valid bit is 0. Timestamps are
    `timestamp | eventTSOverflow << 31`. Raises AedatError (file + byte offset) on bad input.
    """
    if chunk_events < 1:
        raise InputError(f"chunk_events must be >= 1, got {chunk_events}")
    path = Path(path)
    buffers = ReadBuffers() if buffers is None else buffers
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise AedatError(f"{path}: empty file at byte 0, expected '#!AER-DAT3.1'")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            pos = _parse_header(mm, path).data_offset
            _hash(digest, mm, 0, pos)
            while pos < size:
                packets, end = _walk(mm, pos, path, chunk_events, WINDOW_BYTES)
                _hash(digest, mm, pos, end)  # before the decode: then the pages are mapped
                if packets:
                    yield _decode_packets(mm, packets, buffers)
                _release(mm, pos, end)
                pos = end


def _hash(digest: Any, mm: mmap.mmap, start: int, end: int) -> None:
    """Feed bytes [start, end) of the map to `digest`. A stretch longer than the window (one
    packet of another type declaring gigabytes) is released window by window as it is hashed;
    the decode maps back the few pages it needs."""
    if digest is None:
        return
    with memoryview(mm) as view:  # no copy
        for a in range(start, end, WINDOW_BYTES):
            b = min(a + WINDOW_BYTES, end)
            digest.update(view[a:b])
            if end - start > WINDOW_BYTES:
                _release(mm, a, b)


def _release(mm: mmap.mmap, start: int, end: int) -> None:
    """Unmap the pages of [start, end) that are done with, so that the resident size stays one
    chunk however large the file (they stay in the page cache)."""
    if hasattr(mmap, "MADV_DONTNEED"):  # Linux and most Unixes
        lo, hi = start // mmap.PAGESIZE * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
        if hi > lo:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def iter_events(
    path: str | os.PathLike[str], *, chunk_events: int = DEFAULT_CHUNK_EVENTS
) -> Iterator[np.ndarray]:
    """`iter_words`, decoded: EVENT_DTYPE chunks in file order."""
    for t, data in iter_words(path, chunk_events=chunk_events):
        yield decode_words(t, data)


def _decode_packets(
    mm: mmap.mmap, packets: list[tuple[int, int, int, int]], buffers: ReadBuffers
) -> tuple[np.ndarray, np.ndarray]:
    """(t int64, data uint32) of the valid events of these polarity packets of the map, in file
    order, as views of buffers.t and buffers.data: copied out of the map with strided views,
    nothing else allocated."""
    rows = np.array(packets, dtype=np.int64)  # [K, (payload offset, number, capacity, overflow)]
    offsets, numbers, capacities, overflows = rows.T
    n = int(numbers.sum())
    buffers.reserve(n)
    t, data = buffers.t[:n], buffers.data[:n]
    first, k = int(offsets[0]), len(rows)
    stride = PACKET_HEADER.size + POLARITY_EVENT_SIZE * int(numbers[0])
    if (
        (numbers == capacities).all()
        and (numbers == numbers[0]).all()
        and (k == 1 or (np.diff(offsets) == stride).all())
    ):
        # Back-to-back full packets of one size (the dataset's form): one strided view of
        # all their payloads, [K, events, (data, timestamp)] words, and two copies.
        head = PACKET_HEADER.size
        words = np.frombuffer(mm, "<u4", count=k * stride // 4, offset=first - head)
        words = words.reshape(k, stride // 4)[:, head // 4 :].reshape(k, -1, 2)
        t.reshape(k, -1)[...] = words[:, :, 1]
        data.reshape(k, -1)[...] = words[:, :, 0]
    else:
        # Packets of varying sizes (recorders close a packet after a time span): gather the
        # payloads with one memory copy each, the cheapest Python step per packet, then split.
        size = POLARITY_EVENT_SIZE
        buffers.reserve_raw(n * size)
        with memoryview(mm) as src, memoryview(buffers.raw) as dst:
            a = 0
            for o, m in zip(offsets.tolist(), numbers.tolist(), strict=True):
                dst[a : a + m * size] = src[o : o + m * size]
                a += m * size
        words = np.frombuffer(buffers.raw, "<u4", count=2 * n).reshape(n, 2)
        t[...] = words[:, 1]
        data[...] = words[:, 0]
    del words  # release the export of the map, so that it can close
    if overflows.any():
        t |= np.repeat(overflows, numbers) << 31
    # AND over all words has bit 0 set iff every event is valid: one pass, no temporary.
    if not np.bitwise_and.reduce(data) & 1:
        valid = (data & 1).astype(bool)
        m = int(valid.sum())
        t[:m], data[:m] = t[valid], data[valid]
        t, data = t[:m], data[:m]
    return t, data


def read_events(
    path: str | os.PathLike[str], *, chunk_events: int = DEFAULT_CHUNK_EVENTS
) -> np.ndarray:
    """All polarity events of an AEDAT 3.x file as one EVENT_DTYPE array [E], in file order.
    Decodes chunk by chunk (see `iter_events`), so the peak is the result plus one chunk."""
    chunks = list(iter_events(path, chunk_events=chunk_events))
    if len(chunks) == 1:
        return chunks[0]
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=EVENT_DTYPE)


def first_off_sensor(
    path: str | os.PathLike[str], sensor: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """(index among the file's events, byte offset of its data word, x, y) of the first event
    of an AEDAT 3.x file that lies off a sensor of `sensor` (height, width) pixels, or None.
    For error messages: it reads the file again, one Python step per polarity packet."""
    height, width = sensor
    path = Path(path)
    index = 0
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        pos = _parse_header(mm, path).data_offset
        while pos < len(mm):
            packets, end = _walk(mm, pos, path, DEFAULT_CHUNK_EVENTS, WINDOW_BYTES)
            for offset, number, _capacity, _overflow in packets:
                # The data words of the packet's events (a copy: no export of the map survives).
                data = np.frombuffer(mm, "<u4", count=2 * number, offset=offset)[::2].copy()
                valid = (data & 1).astype(bool)
                x, y, _ = unpack_data(data)
                off = np.flatnonzero(valid & ((x >= width) | (y >= height)))
                if len(off):
                    k = int(off[0])
                    found = index + int(valid[:k].sum())
                    return found, offset + POLARITY_EVENT_SIZE * k, int(x[k]), int(y[k])
                index += int(valid.sum())
            _release(mm, pos, end)
            pos = end
    return None
