"""Write AEDAT 3.1 files (the layout `dvsgkit.io.aedat` reads), in chunks and atomically."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from dvsgkit.constants import EVENT_DTYPE
from dvsgkit.errors import InputError
from dvsgkit.fs import atomic_file
from dvsgkit.io.aedat_format import (
    END_HEADER,
    P_SHIFT,
    PACKET_HEADER,
    POLARITY_EVENT,
    TS_MASK,
    X_SHIFT,
    XY_MASK,
    Y_SHIFT,
)


def encode_polarity(events: np.ndarray) -> np.ndarray:
    """EVENT_DTYPE events -> [n, 2] uint32 (data, timestamp & 0x7FFFFFFF), valid bit set."""
    x = events["x"].astype(np.uint32)
    y = events["y"].astype(np.uint32)
    if len(events) and (x.max() > XY_MASK or y.max() > XY_MASK):
        raise InputError(f"x and y must be <= {XY_MASK}, got max x {x.max()}, max y {y.max()}")
    if len(events) and events["p"].max() > 1:  # a 2 would land in y's lowest bit
        raise InputError(f"polarity must be 0 or 1, got {events['p'].max()}")
    words = np.empty((len(events), 2), dtype="<u4")
    words[:, 0] = (x << X_SHIFT) | (y << Y_SHIFT) | (events["p"].astype(np.uint32) << P_SHIFT) | 1
    words[:, 1] = events["t"] & TS_MASK
    return words


def packet_header(
    event_type: int,
    event_size: int,
    capacity: int,
    *,
    number: int | None = None,
    ts_overflow: int = 0,
) -> bytes:
    """The 28-byte header of one packet of source 1 (eventNumber and eventValid default to
    `capacity`)."""
    number = capacity if number is None else number
    return PACKET_HEADER.pack(event_type, 1, event_size, 4, ts_overflow, capacity, number, number)


class AedatWriter:
    """Write an AEDAT 3.1 file in chunks, atomically: events go to a temporary file beside it
    (`dvsgkit.fs.atomic_file`), renamed to `path` only when the `with` block ends without an
    exception.

        with AedatWriter(path) as w:
            w.write(events)          # EVENT_DTYPE, any number of calls, in file order
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        source: str = "DVS128",
        start_time: str = "2017-01-01 00:00:00 (TZ+0000)",
        packet_events: int = 8192,
    ) -> None:
        if packet_events < 1:
            raise InputError(f"packet_events must be >= 1, got {packet_events}")
        self.path = Path(path)
        self.partial: Path | None = None  # the temporary file, while the block runs
        self.packet_events = packet_events
        self._header = (
            "#!AER-DAT3.1\r\n#Format: RAW\r\n"
            f"#Source 1: {source}\r\n#Start-Time: {start_time}\r\n{END_HEADER}\r\n"
        ).encode("ascii")
        self._file: BinaryIO | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> AedatWriter:
        with contextlib.ExitStack() as stack:  # a failed open or header write undoes itself
            self.partial = stack.enter_context(atomic_file(self.path))
            self._file = stack.enter_context(open(self.partial, "wb"))
            self._file.write(self._header)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._file = None
        # Closes the file, then renames it onto `path`, or deletes it after an exception.
        self._stack.__exit__(*exc_info)

    def write_raw(self, data: bytes) -> None:
        """Append bytes as they are (a hand-made packet, e.g. in tests)."""
        self._open().write(data)

    def write(self, events: np.ndarray) -> None:
        """Append events as full polarity packets of `packet_events` (the last may be smaller);
        a packet never spans two eventTSOverflow values."""
        out = self._open()
        if events.dtype != EVENT_DTYPE:
            raise InputError(f"events must have dtype EVENT_DTYPE, got {events.dtype}")
        if len(events) and events["t"].min() < 0:
            raise InputError(f"timestamps must be >= 0, got {events['t'].min()}")
        overflow = events["t"] >> 31
        for run in np.split(events, np.flatnonzero(np.diff(overflow)) + 1):
            if len(run):
                self._write_run(out, run, int(run["t"][0] >> 31))

    def _write_run(self, out: BinaryIO, events: np.ndarray, overflow: int) -> None:
        k = self.packet_events
        words = encode_polarity(events)
        full = len(events) // k
        if full:
            header = np.frombuffer(packet_header(POLARITY_EVENT, 8, k, ts_overflow=overflow), "<u4")
            block = np.empty((full, 7 + 2 * k), dtype="<u4")  # [packets, header words + events]
            block[:, :7] = header
            block[:, 7:] = words[: full * k].reshape(full, 2 * k)
            out.write(block.tobytes())
        rest = words[full * k :]
        if len(rest):
            out.write(packet_header(POLARITY_EVENT, 8, len(rest), ts_overflow=overflow))
            out.write(rest.tobytes())

    def _open(self) -> BinaryIO:
        if self._file is None:
            raise RuntimeError("AedatWriter used outside its `with` block")
        return self._file


def write_aedat(
    path: str | os.PathLike[str], events: np.ndarray, *, packet_events: int = 8192, **header: str
) -> Path:
    """Write EVENT_DTYPE events to an AEDAT 3.1 file (atomically); returns the path."""
    with AedatWriter(path, packet_events=packet_events, **header) as writer:
        writer.write(events)
    return writer.path
