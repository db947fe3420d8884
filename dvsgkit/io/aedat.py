"""Read the polarity events of AEDAT 3.1 files (the DVS128 Gesture recordings) in bulk, with
numpy, in bounded memory. The layout and the packet walk: `dvsgkit.io.aedat_format`."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.constants import EVENT_DTYPE
from dvsgkit.errors import InputError
from dvsgkit.io.aedat_format import (
    P_SHIFT,
    PACKET_HEADER,
    POLARITY_EVENT_SIZE,
    WINDOW_BYTES,
    X_SHIFT,
    XY_MASK,
    Y_SHIFT,
    AedatError,
    Packet,
    open_map,
    parse_header,
    read_header,
    release,
    walk_packets,
)

__all__ = [  # the reading API, AedatError and read_header included (from aedat_format)
    "AedatError", "DEFAULT_CHUNK_EVENTS", "ReadBuffers", "decode_words", "first_off_sensor",
    "iter_events", "iter_words", "max_xy", "read_events", "read_header", "unpack_data",
    "unpack_into", "xy_bound",
]  # fmt: skip

DEFAULT_CHUNK_EVENTS = 1 << 22  # ~4 M events per chunk: ~32 MB of file, 48 MB decoded (t, data)


def unpack_data(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Polarity data words (uint32) -> x uint16, y uint16, p uint8."""
    x, y = np.empty(len(data), np.uint16), np.empty(len(data), np.uint16)
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
    whatever the file size: the file is memory-mapped, a chunk's packets are found within
    `WINDOW_BYTES` of it, and its pages are unmapped once it is decoded.

    A chunk's arrays live in `buffers` (fresh ones if None) and are overwritten by the next
    chunk: copy what you keep. `digest` (a hashlib object), if given, is updated with every
    byte of the file in order, so that one pass over the file both hashes and decodes it.

    Each polarity packet contributes its first `eventNumber` slots minus the events whose valid
    bit is 0; timestamps are `timestamp | eventTSOverflow << 31`. Raises AedatError (file and
    byte offset) on bad input."""
    if chunk_events < 1:
        raise InputError(f"chunk_events must be >= 1, got {chunk_events}")
    path = Path(path)
    buffers = ReadBuffers() if buffers is None else buffers
    with open(path, "rb") as f, open_map(f, path) as mm:
        for packets in _chunks(mm, path, chunk_events, digest):
            yield _decode_packets(mm, packets, buffers)


def _chunks(
    mm: mmap.mmap, path: Path, chunk_events: int, digest: Any = None
) -> Iterator[list[Packet]]:
    """The polarity packets of the mapped file, about `chunk_events` events at a time; each
    chunk's bytes are fed to `digest` before it is decoded (its pages are mapped then), and
    released once the caller asks for the next."""
    pos = parse_header(mm, path).data_offset
    _hash(digest, mm, 0, pos)
    while pos < len(mm):
        packets, end = walk_packets(mm, pos, path, chunk_events, WINDOW_BYTES)
        _hash(digest, mm, pos, end)
        if packets:
            yield packets
        release(mm, pos, end)
        pos = end


def _hash(digest: Any, mm: mmap.mmap, start: int, end: int) -> None:
    """Feed bytes [start, end) of the map to `digest`. A stretch longer than the window (one
    packet of another type declaring gigabytes) is released window by window as it is hashed."""
    if digest is None:
        return
    with memoryview(mm) as view:  # no copy
        for a in range(start, end, WINDOW_BYTES):
            b = min(a + WINDOW_BYTES, end)
            digest.update(view[a:b])
            if end - start > WINDOW_BYTES:
                release(mm, a, b)


def _decode_packets(
    mm: mmap.mmap, packets: list[Packet], buffers: ReadBuffers
) -> tuple[np.ndarray, np.ndarray]:
    """(t int64, data uint32) of the valid events of these polarity packets of the map, in file
    order, as views of buffers.t and buffers.data: copied out of the map with strided views,
    nothing else allocated."""
    rows = np.array(packets, dtype=np.int64)  # [K, (payload offset, number, capacity, overflow)]
    offsets, numbers, capacities, overflows = rows.T
    n, k = int(numbers.sum()), len(rows)
    buffers.reserve(n)
    t, data = buffers.t[:n], buffers.data[:n]
    head, stride = PACKET_HEADER.size, PACKET_HEADER.size + POLARITY_EVENT_SIZE * int(numbers[0])
    if (
        (numbers == capacities).all()
        and (numbers == numbers[0]).all()
        and (k == 1 or (np.diff(offsets) == stride).all())
    ):
        # Back-to-back full packets of one size (the dataset's form): one strided view of
        # all their payloads, [K, events, (data, timestamp)] words, and two copies.
        words = np.frombuffer(mm, "<u4", count=k * stride // 4, offset=int(offsets[0]) - head)
        words = words.reshape(k, stride // 4)[:, head // 4 :].reshape(k, -1, 2)
        t.reshape(k, -1)[...] = words[:, :, 1]
        data.reshape(k, -1)[...] = words[:, :, 0]
    else:
        # Packets of varying sizes (recorders close a packet after a time span): gather the
        # payloads with one memory copy each, the cheapest Python step per packet, then split.
        if len(buffers.raw) < n * POLARITY_EVENT_SIZE:
            buffers.raw = bytearray(n * POLARITY_EVENT_SIZE)
        with memoryview(mm) as src, memoryview(buffers.raw) as dst:
            a = 0
            for o, m in zip(
                offsets.tolist(), (numbers * POLARITY_EVENT_SIZE).tolist(), strict=True
            ):
                dst[a : a + m] = src[o : o + m]
                a += m
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


def iter_events(
    path: str | os.PathLike[str], *, chunk_events: int = DEFAULT_CHUNK_EVENTS
) -> Iterator[np.ndarray]:
    """`iter_words`, decoded: EVENT_DTYPE chunks in file order."""
    for t, data in iter_words(path, chunk_events=chunk_events):
        yield decode_words(t, data)


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
    path, index = Path(path), 0
    with open(path, "rb") as f, open_map(f, path) as mm:
        for packets in _chunks(mm, path, DEFAULT_CHUNK_EVENTS):
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
    return None
